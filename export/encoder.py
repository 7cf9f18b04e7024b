"""The small DistilBERT encoder shared by the router and the T1 heads, and its input encoding.

Both are transformers' DistilBERT scaled down and trained from scratch (no hub here); vocabulary and
padding come from the byte-level BPE all tiers share (export/tokenizer.py). Its BOS token <s> is
prepended to every input and plays the role of [CLS]: the router and the sequence classifiers read
position 0.

Input encoding (routenlp_core/encoder_inputs.py) is shared by training, parity checks and serving, so
they encode a text the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # transformers' models would pull in torch at import
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
