"""T1 pre- and post-processing: text -> (input_ids, attention_mask), logits -> answer.

Shared by training/evaluation (export/t1.py re-exports every name here) and by the routing BLS,
which runs the logits function as a BLS call to `t1_<task>`: one copy of the code, so a served
T1 answer is exactly the one the build measured. Nothing here needs torch (only numpy and a
tokenizer; the encoder input rules are routenlp_core/encoder_inputs.py).

NER alignment: the words are joined with single spaces, exactly the record's text, and each BPE
piece is mapped back to its word through the character offsets. (`is_split_into_words` would
encode every word without its leading-space byte, i.e. different ids from the running text a
client sends.) The first piece of a word carries the word's label; the others, <s> and padding
carry -100. A word cut off by `max_len` is predicted "O" with uniform (maximal) uncertainty.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from routenlp_core.encoder_inputs import encode_texts, pad_batch
from routenlp_core.stage_times import span
from routenlp_core.tasks import get_task

IGNORE_INDEX = -100
OUTSIDE = "O"

# (input_ids [B, T], attention_mask [B, T]) int64 -> logits [B, labels] or [B, T, labels]
LogitsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def is_token_task(task: str) -> bool:
    return get_task(task).kind == "ner"


def record_words(record: Mapping[str, Any]) -> list[str]:
    """The words of a fin_ner record: its `tokens`, else its text split on whitespace."""
    tokens = record.get("tokens")
    return [str(t) for t in tokens] if tokens is not None else str(record["text"]).split()


def encode_words(tokenizer, words: Sequence[str], max_len: int) -> tuple[list[int], list[int]]:
    """Ids of " ".join(words) (with <s>, first max_len pieces) and each piece's word index (-1: none)."""
    text = " ".join(words)
    owner = np.full(len(text) + 1, -1, dtype=np.int64)
    position = 0
    for index, word in enumerate(words):
        owner[position : position + len(word)] = index
        position += len(word) + 1
    encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, word_of = [], []
    for token_id, (start, end) in zip(encoded["input_ids"][:max_len], encoded["offset_mapping"][:max_len]):
        span = owner[start:end]
        hits = span[span >= 0]
        ids.append(token_id)
        # <s> has an empty span; a lone "Ġ" piece covers only the space between words.
        word_of.append(int(hits[0]) if hits.size else -1)
    return ids, word_of


def first_piece_labels(word_of: Sequence[int], word_labels: Sequence[int]) -> list[int]:
    """Label of the word on its first piece, -100 elsewhere (later pieces, <s>, spaces)."""
    labels, seen = [], set()
    for word in word_of:
        if word >= 0 and word not in seen:
            seen.add(word)
            labels.append(int(word_labels[word]))
        else:
            labels.append(IGNORE_INDEX)
    return labels


class TokenIds:
    """tokenizer(text)["input_ids"] from the Rust tokenizer alone (same ids, no BatchEncoding per
    call), the last text's ids kept per thread: the BLS's router, T1 and T1's billed tokens all
    encode the one request text (three tokenizer calls were ~470 us of a routed request)."""

    def __init__(self, tokenizer) -> None:
        from tokenizers import Tokenizer

        # A copy: transformers re-arms truncation/padding on its own backend object per call.
        self._rust = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._rust.no_truncation()
        self._rust.no_padding()
        self.pad_token_id = tokenizer.pad_token_id
        self._last = threading.local()

    def __call__(self, text: str) -> list[int]:
        last = self._last
        if getattr(last, "text", None) is not text:
            last.ids, last.text = self._rust.encode(text, add_special_tokens=True).ids, text
        return last.ids

    def batch(self, ids: Sequence[int], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) int64 [1, T] of the first max_len ids (pad_batch of one)."""
        row = np.asarray(ids[:max_len] or [self.pad_token_id], dtype=np.int64).reshape(1, -1)
        return row, np.ones_like(row) if ids else np.zeros_like(row)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def predict_with(
    logits_fn: LogitsFn,
    tokenizer,
    task: str,
    labels: Sequence[str],
    records: Sequence[Mapping[str, Any]],
    max_len: int,
    batch_size: int = 64,
    token_ids: TokenIds | None = None,
) -> list[tuple[Any, float]]:
    """(prediction, uncertainty) per record, in benchmark format.

    Classification: (label, 1 - max softmax prob). NER: (one IO tag per word, mean over words of
    1 - max prob); words past max_len get "O" and the uniform-distribution uncertainty 1 - 1/L.
    token_ids: encode a classification text with it (the BLS, one record) instead of `tokenizer`.
    """
    labels = list(labels)
    token_level = is_token_task(task)
    results: list[tuple[Any, float]] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        with span("tokenize"):
            if token_level:
                words = [record_words(r) for r in chunk]
                encoded = [encode_words(tokenizer, w, max_len) for w in words]
                ids = [e[0] for e in encoded]
            elif token_ids is not None and len(chunk) == 1:
                ids = [token_ids(str(chunk[0]["text"]))[:max_len]]
            else:
                ids = encode_texts(tokenizer, [str(r["text"]) for r in chunk], max_len)
            if token_ids is not None and len(ids) == 1:
                input_ids, attention = token_ids.batch(ids[0], max_len)
            else:
                input_ids, attention = pad_batch(ids, tokenizer.pad_token_id)
        logits = np.asarray(logits_fn(input_ids, attention), dtype=np.float32)
        expected = (len(chunk), input_ids.shape[1], len(labels)) if token_level else (len(chunk), len(labels))
        if logits.shape != expected:
            raise ValueError(f"T1 {task}: logits shape {list(logits.shape)}, expected {list(expected)} ({len(labels)} labels)")
        probs = softmax(logits)
        if not token_level:
            best = probs.argmax(axis=-1)
            results.extend((labels[int(b)], float(1.0 - p[b])) for b, p in zip(best, probs))
            continue
        unseen = 1.0 - 1.0 / len(labels)
        for row, (sentence, (_, word_of)) in enumerate(zip(words, encoded)):
            tags = [OUTSIDE] * len(sentence)
            doubt = [unseen] * len(sentence)
            done = set()
            for position, word in enumerate(word_of):
                if word < 0 or word in done:
                    continue
                done.add(word)
                p = probs[row, position]
                best = int(p.argmax())
                tags[word] = labels[best]
                doubt[word] = float(1.0 - p[best])
            results.append((tags, float(np.mean(doubt)) if doubt else 0.0))
    return results
