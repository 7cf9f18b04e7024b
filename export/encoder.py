"""The small DistilBERT encoder shared by the router and the T1 heads, and its input encoding.

Both are transformers' DistilBERT scaled down and trained from scratch (no hub here); vocabulary and
padding come from the byte-level BPE all tiers share (export/tokenizer.py). Its BOS token <s> is
prepended to every input and plays the role of [CLS]: the router and the sequence classifiers read
position 0.

Input encoding lives here, beside the architecture, so training, parity checks and serving encode a
text the same way: encode with special tokens, keep the *first* `max_len` tokens, right-pad.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the serving BLS imports this module; transformers' models would pull in torch
    from transformers import DistilBertConfig, PreTrainedTokenizerBase


@dataclass(frozen=True)
class EncoderArch:
    """Shape of a DistilBERT encoder: the portfolio's `arch = {family = "distilbert", ...}` table."""

    dim: int = 128
    layers: int = 2
    heads: int = 4
    hidden_dim: int = 512
    max_positions: int = 512

    def __post_init__(self) -> None:
        for name in ("dim", "layers", "heads", "hidden_dim", "max_positions"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"encoder {name} must be >= 1, got {getattr(self, name)!r}")
        if self.dim % self.heads:
            raise ValueError(f"encoder dim {self.dim} is not divisible by heads {self.heads}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "EncoderArch":
        """From a portfolio arch table; `family` must be distilbert, unknown keys are an error."""
        raw = dict(raw)
        family = raw.pop("family", "distilbert")
        if family != "distilbert":
            raise ValueError(f"encoder family {family!r} is not supported (only 'distilbert')")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown encoder arch field(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**{key: int(value) for key, value in raw.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"family": "distilbert", **asdict(self)}


def as_arch(arch: EncoderArch | Mapping[str, Any]) -> EncoderArch:
    return arch if isinstance(arch, EncoderArch) else EncoderArch.from_dict(arch)


def build_encoder_config(
    arch: EncoderArch | Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, **head_kwargs: Any
) -> DistilBertConfig:
    """DistilBertConfig for `arch` with vocab size and pad id from `tokenizer`.

    head_kwargs go straight into the config (num_labels, id2label, label2id, dropout, ...).
    Eager attention: identical maths to SDPA at these sizes, and what the legacy ONNX exporter
    traces most simply.
    """
    arch = as_arch(arch)
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; train it with export.tokenizer.train_tokenizer")
    from transformers import DistilBertConfig

    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=arch.dim,
        n_layers=arch.layers,
        n_heads=arch.heads,
        hidden_dim=arch.hidden_dim,
        max_position_embeddings=arch.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **head_kwargs,
    )
    config._attn_implementation = "eager"
    return config


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
