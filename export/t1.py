"""T1: one small DistilBERT per structured task, trained from scratch, served through ONNX Runtime.

cs_intent / legal_clause / legal_risk get DistilBertForSequenceClassification (reads <s> = [CLS]),
fin_ner gets DistilBertForTokenClassification over IO tags. Each model's config carries its task
(`routenlp_task`) and its labels (id2label / label2id from routenlp.data.task_labels), so a saved
checkpoint or an ONNX export says what it predicts.

NER alignment: the words are joined with single spaces, exactly the record's text, and each BPE
piece is mapped back to its word through the character offsets. (`is_split_into_words` would
encode every word without its leading-space byte, i.e. different ids from the running text a
client sends.) The first piece of a word carries the word's label; the others, <s> and padding
carry -100. A word cut off by `max_len` is predicted "O" with uniform (maximal) uncertainty.

Prediction is written once (`predict_with`) over a `logits_fn(input_ids, attention_mask) ->
np.ndarray`, so the torch model and an onnxruntime session share every line of pre- and
post-processing (`predict_t1` accepts either).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from export.encoder import (
    EncoderArch,
    as_arch,
    build_encoder_config,
    encode_texts,
    length_bucketed_batches,
    pad_batch,
    warmup_linear,
)
from routenlp.data import task_labels
from routenlp.metrics import corpus_score, metric_name, secondary_scores
from routenlp.tasks import TASK_NAMES, get_task

IGNORE_INDEX = -100
OUTSIDE = "O"
T1_TASKS: tuple[str, ...] = tuple(name for name in TASK_NAMES if get_task(name).structured)
META_FILE = "routenlp_t1.json"
DEFAULT_LR = 1e-3
MAX_GRAD_NORM = 1.0

LogitsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def is_token_task(task: str) -> bool:
    return get_task(task).kind == "ner"


def labels_for(task: str) -> tuple[str, ...]:
    if not get_task(task).structured:
        raise ValueError(f"task {task!r} is a generation task and has no T1 head; T1 tasks: {', '.join(T1_TASKS)}")
    labels = task_labels(task)
    if not labels:
        raise ValueError(f"no label set for {task!r}: build the benchmark first (routenlp data build)")
    return labels


def build_t1(task: str, tokenizer: PreTrainedTokenizerBase, arch: EncoderArch | Mapping[str, Any]) -> PreTrainedModel:
    """A randomly initialised T1 head for `task` (call torch.manual_seed first to fix it)."""
    labels = labels_for(task)
    config = build_encoder_config(
        arch,
        tokenizer,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    config.routenlp_task = task
    cls = DistilBertForTokenClassification if is_token_task(task) else DistilBertForSequenceClassification
    return cls(config).to(torch.float32)


# ---------------------------------------------------------------- encoding


def record_words(record: Mapping[str, Any]) -> list[str]:
    """The words of a fin_ner record: its `tokens`, else its text split on whitespace."""
    tokens = record.get("tokens")
    return [str(t) for t in tokens] if tokens is not None else str(record["text"]).split()


def encode_words(tokenizer: PreTrainedTokenizerBase, words: Sequence[str], max_len: int) -> tuple[list[int], list[int]]:
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


def encode_examples(
    task: str, records: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase, max_len: int, label2id: Mapping[str, int]
) -> list[tuple[list[int], Any]]:
    """(ids, label) per record: a label id, or per-piece label ids for NER."""
    if is_token_task(task):
        out = []
        for record in records:
            words = record_words(record)
            tags = list(record["target"])
            if len(tags) != len(words):
                raise ValueError(f"{record.get('id')}: {len(words)} words but {len(tags)} tags")
            ids, word_of = encode_words(tokenizer, words, max_len)
            out.append((ids, first_piece_labels(word_of, [_label_id(label2id, t, record) for t in tags])))
        return out
    ids = encode_texts(tokenizer, [str(r["text"]) for r in records], max_len)
    return [(seq, _label_id(label2id, r["target"], r)) for seq, r in zip(ids, records)]


def _label_id(label2id: Mapping[str, int], label: str, record: Mapping[str, Any]) -> int:
    try:
        return label2id[label]
    except KeyError:
        raise ValueError(f"{record.get('id')}: label {label!r} is not one of the model's {len(label2id)} labels") from None


def _collate(examples: Sequence[tuple[list[int], Any]], pad_id: int, token_level: bool) -> dict[str, torch.Tensor]:
    input_ids, attention = pad_batch([ids for ids, _ in examples], pad_id)
    if token_level:
        labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)
        for row, (_, labs) in enumerate(examples):
            labels[row, : len(labs)] = labs
    else:
        labels = np.array([lab for _, lab in examples], dtype=np.int64)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "labels": torch.from_numpy(labels),
    }


# ---------------------------------------------------------------- training


def train_t1(
    task: str,
    train_records: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    arch: EncoderArch | Mapping[str, Any],
    *,
    epochs: int,
    max_len: int,
    batch_size: int = 32,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    weight_decay: float = 0.01,
    progress: bool = True,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Train a T1 head for `task` from scratch (AdamW, warm-up + linear decay, clip 1.0).

    Same seed, same data -> same model (initialisation and shuffling are both seeded).
    """
    if not train_records:
        raise ValueError(f"no training records for {task}")
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    arch = as_arch(arch)
    torch.manual_seed(seed)
    model = build_t1(task, tokenizer, arch)
    token_level = is_token_task(task)
    examples = encode_examples(task, train_records, tokenizer, max_len, model.config.label2id)
    shuffler = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total_steps = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(total_steps))

    model.train()
    epoch_losses: list[float] = []
    tokens_seen = 0
    started = time.perf_counter()
    bar = tqdm(total=total_steps, desc=f"train t1 {task}", unit="step", disable=not progress)
    lengths = [len(ids) for ids, _ in examples]
    for _ in range(epochs):
        loss_sum = 0.0
        for rows in length_bucketed_batches(lengths, batch_size, shuffler):
            batch = _collate([examples[i] for i in rows], tokenizer.pad_token_id, token_level)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item()
            tokens_seen += int(batch["attention_mask"].sum())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        epoch_losses.append(loss_sum / steps_per_epoch)
    bar.close()
    model.eval()
    seconds = time.perf_counter() - started
    stats = {
        "task": task,
        "arch": arch.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "examples": len(examples),
        "epochs": epochs,
        "steps": total_steps,
        "batch_size": batch_size,
        "lr": lr,
        "max_len": max_len,
        "seed": seed,
        "epoch_losses": [round(x, 5) for x in epoch_losses],
        "final_loss": round(epoch_losses[-1], 5),
        "tokens_seen": tokens_seen,
        "train_seconds": round(seconds, 2),
        "examples_per_second": round(len(examples) * epochs / seconds, 1) if seconds > 0 else None,
        "threads": torch.get_num_threads(),
    }
    return model, stats


# ---------------------------------------------------------------- prediction


def torch_logits_fn(model: torch.nn.Module) -> LogitsFn:
    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask))
        return out.logits.numpy()

    model.eval()
    return run


def ort_logits_fn(session, input_names: Sequence[str] = ("input_ids", "attention_mask"), output_name: str = "logits") -> LogitsFn:
    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = dict(zip(input_names, (input_ids, attention_mask)))
        return session.run([output_name], feed)[0]

    return run


def logits_fn_for(model_or_session: Any) -> LogitsFn:
    """A logits function over a torch module or an onnxruntime InferenceSession."""
    if isinstance(model_or_session, torch.nn.Module):
        return torch_logits_fn(model_or_session)
    if hasattr(model_or_session, "run") and hasattr(model_or_session, "get_inputs"):
        names = [i.name for i in model_or_session.get_inputs()]
        if names[:2] != ["input_ids", "attention_mask"]:
            raise ValueError(f"ONNX session inputs {names} are not the T1 spec's (input_ids, attention_mask)")
        return ort_logits_fn(model_or_session)
    if callable(model_or_session):
        return model_or_session
    raise TypeError(f"expected a torch module, an onnxruntime session or a logits function, got {type(model_or_session).__name__}")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def predict_with(
    logits_fn: LogitsFn,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    labels: Sequence[str],
    records: Sequence[Mapping[str, Any]],
    max_len: int,
    batch_size: int = 64,
) -> list[tuple[Any, float]]:
    """(prediction, uncertainty) per record, in benchmark format.

    Classification: (label, 1 - max softmax prob). NER: (one IO tag per word, mean over words of
    1 - max prob); words past max_len get "O" and the uniform-distribution uncertainty 1 - 1/L.
    """
    labels = list(labels)
    token_level = is_token_task(task)
    results: list[tuple[Any, float]] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        if token_level:
            words = [record_words(r) for r in chunk]
            encoded = [encode_words(tokenizer, w, max_len) for w in words]
            ids = [e[0] for e in encoded]
        else:
            ids = encode_texts(tokenizer, [str(r["text"]) for r in chunk], max_len)
        input_ids, attention = pad_batch(ids, tokenizer.pad_token_id)
        logits = np.asarray(logits_fn(input_ids, attention), dtype=np.float32)
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


def model_labels(model_or_session: Any, task: str) -> list[str]:
    """Labels in logit order: the model config's, the ONNX file's metadata, else the task's set."""
    config = getattr(model_or_session, "config", None)
    if config is not None and getattr(config, "id2label", None):
        return [config.id2label[i] for i in range(config.num_labels)]
    if hasattr(model_or_session, "get_modelmeta"):
        meta = model_or_session.get_modelmeta().custom_metadata_map
        if meta.get("routenlp_task") not in (None, task):
            raise ValueError(f"this ONNX model is the T1 head of {meta['routenlp_task']!r}, not {task!r}")
        if "labels" in meta:
            return list(json.loads(meta["labels"]))
    return list(labels_for(task))


def predict_t1(
    model_or_session: Any,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    records: Sequence[Mapping[str, Any]],
    max_len: int,
    batch_size: int = 64,
    labels: Sequence[str] | None = None,
) -> list[tuple[Any, float]]:
    """predict_with() over a torch T1 model or an onnxruntime session of its ONNX export."""
    labels = labels or model_labels(model_or_session, task)
    return predict_with(logits_fn_for(model_or_session), tokenizer, task, labels, records, max_len, batch_size)


def evaluate_t1(model_or_session: Any, tokenizer: PreTrainedTokenizerBase, task: str, records: Sequence[Mapping[str, Any]], max_len: int) -> dict[str, Any]:
    """The task's official corpus metric of T1 on `records` (+ secondary numbers, mean uncertainty)."""
    started = time.perf_counter()
    outputs = predict_t1(model_or_session, tokenizer, task, records, max_len)
    predictions = [p for p, _ in outputs]
    references = [r["target"] for r in records]
    return {
        "metric": metric_name(task),
        "score": round(corpus_score(task, predictions, references), 4),
        "secondary": {k: round(v, 4) for k, v in secondary_scores(task, predictions, references).items()},
        "n": len(records),
        "mean_uncertainty": round(float(np.mean([u for _, u in outputs])), 4),
        "predict_seconds": round(time.perf_counter() - started, 2),
    }


# ---------------------------------------------------------------- checkpoints and the pipeline entry


def save_t1(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path, meta: Mapping[str, Any]) -> Path:
    """save_pretrained (config holds task + labels) + tokenizer + routenlp_t1.json (stats, max_len)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    record = {"task": model.config.routenlp_task, "architecture": type(model).__name__, **dict(meta)}
    (out_dir / META_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return out_dir


def load_t1(model_dir: Path) -> tuple[PreTrainedModel, dict[str, Any]]:
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    cls = DistilBertForTokenClassification if is_token_task(meta["task"]) else DistilBertForSequenceClassification
    model = cls.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    return model, meta
