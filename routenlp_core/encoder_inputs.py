"""How a text becomes the input of the DistilBERT encoders (router, T1 heads), shared by training, the
ONNX parity checks and serving: encode with special tokens (the leading <s> plays [CLS]), keep the
*first* `max_len` tokens, right-pad. Needs only numpy and a tokenizer object, never torch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids (with the leading <s>) of each text, cut to the first `max_len` tokens."""
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 (<s> plus one token), got {max_len}")
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [ids[:max_len] for ids in encoded]


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence: (input_ids, attention_mask), both int64 [B, T]."""
    if not sequences:
        raise ValueError("cannot pad an empty batch")
    width = max(1, max(len(seq) for seq in sequences))
    input_ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = seq
        attention[row, : len(seq)] = 1
    return input_ids, attention
