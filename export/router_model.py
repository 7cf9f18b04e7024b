"""RouterNet: which tier is the cheapest that meets the task's bar for this input (paper 3.1).

DistilBERT encoder -> hidden state at position 0 (<s>, the [CLS]) ++ learned task embedding
-> Linear(dim + task_dim, mlp_hidden) -> ReLU -> Dropout -> Linear(mlp_hidden, tiers) logits.

Self-describing: `save_router` writes the constructor arguments (router_args.json, including the
task names in task-id order) beside the weights, and `load_router` rebuilds the model from them.
No training code here (export/train_router.py trains it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import DistilBertModel, PreTrainedTokenizerBase

from export.encoder import EncoderArch, build_encoder_config
from routenlp.portfolio import TIER_ORDER, RouterSettings
from routenlp_core.encoder_inputs import encode_texts, pad_batch
from routenlp_core.tasks import TASK_NAMES

ARGS_FILE = "router_args.json"
WEIGHTS_FILE = "router.safetensors"


class _VocabOnly:
    """What build_encoder_config reads from a tokenizer, rebuilt from saved numbers."""

    def __init__(self, vocab_size: int, pad_token_id: int, bos_token_id: int | None, eos_token_id: int | None):
        self.vocab_size, self.pad_token_id = vocab_size, pad_token_id
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id

    def __len__(self) -> int:
        return self.vocab_size


class RouterNet(nn.Module):
    def __init__(
        self,
        encoder: Mapping[str, Any],
        vocab_size: int,
        pad_token_id: int,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        task_names: Sequence[str] = TASK_NAMES,
        tier_names: Sequence[str] = TIER_ORDER,
        task_embedding_dim: int = 64,
        mlp_hidden: int = 256,
        dropout: float = 0.1,
    ):
        super().__init__()
        arch = EncoderArch.from_dict(encoder)
        self.args = {
            "encoder": arch.to_dict(),
            "vocab_size": int(vocab_size),
            "pad_token_id": int(pad_token_id),
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "task_names": list(task_names),
            "tier_names": list(tier_names),
            "task_embedding_dim": int(task_embedding_dim),
            "mlp_hidden": int(mlp_hidden),
            "dropout": float(dropout),
        }
        vocab = _VocabOnly(vocab_size, pad_token_id, bos_token_id, eos_token_id)
        self.encoder = DistilBertModel(build_encoder_config(arch, vocab))
        self.task_embedding = nn.Embedding(len(task_names), task_embedding_dim)
        self.head = nn.Sequential(
            nn.Linear(arch.dim + task_embedding_dim, mlp_hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_hidden, len(tier_names)),
        )

    @classmethod
    def from_settings(cls, settings: RouterSettings, tokenizer: PreTrainedTokenizerBase, **overrides: Any) -> "RouterNet":
        """A randomly initialised router for the portfolio's [router] section (seed torch first)."""
        args = dict(
            encoder=dict(settings.encoder),
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            task_embedding_dim=settings.task_embedding_dim,
            mlp_hidden=settings.mlp_hidden,
            dropout=settings.dropout,
        )
        args.update(overrides)
        return cls(**args)

    @property
    def task_names(self) -> list[str]:
        return self.args["task_names"]

    @property
    def tier_names(self) -> list[str]:
        return self.args["tier_names"]

    @property
    def num_tiers(self) -> int:
        return len(self.args["tier_names"])

    def task_ids(self, tasks: Sequence[str]) -> list[int]:
        index = {name: i for i, name in enumerate(self.task_names)}
        try:
            return [index[t] for t in tasks]
        except KeyError as err:
            raise ValueError(f"router knows no task {err.args[0]!r}; valid tasks: {', '.join(self.task_names)}") from None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask [B, T]; task_id [B] or [B, 1] (the ONNX spec's shape) -> [B, tiers]."""
        return self.head(self._joint(input_ids, attention_mask, task_id))

    def penultimate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        """[B, mlp_hidden]: the activations the tier logits are read from (what coopt clusters)."""
        return self.head[:2](self._joint(input_ids, attention_mask, task_id))

    def _joint(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.cat([hidden[:, 0], self.task_embedding(task_id.reshape(-1))], dim=-1)


def encode_router_inputs(
    model: RouterNet, tokenizer: PreTrainedTokenizerBase, records: Sequence[Mapping[str, Any]], max_len: int
) -> dict[str, np.ndarray]:
    """Padded {input_ids, attention_mask [B, T], task_id [B, 1]} (int64) for records with "text", "task"."""
    input_ids, attention = pad_batch(encode_texts(tokenizer, [str(r["text"]) for r in records], max_len), tokenizer.pad_token_id)
    task_id = np.asarray(model.task_ids([r["task"] for r in records]), dtype=np.int64).reshape(-1, 1)
    return {"input_ids": input_ids, "attention_mask": attention, "task_id": task_id}


def router_logits(
    model: RouterNet, tokenizer: PreTrainedTokenizerBase, records: Sequence[Mapping[str, Any]], max_len: int, batch_size: int = 128
) -> np.ndarray:
    """[N, tiers] logits in eval mode."""
    return _batched(model, model.forward, model.num_tiers, tokenizer, records, max_len, batch_size)


def router_embeddings(
    model: RouterNet, tokenizer: PreTrainedTokenizerBase, records: Sequence[Mapping[str, Any]], max_len: int, batch_size: int = 128
) -> np.ndarray:
    """[N, mlp_hidden] penultimate-layer representations in eval mode (paper appendix G)."""
    return _batched(model, model.penultimate, model.args["mlp_hidden"], tokenizer, records, max_len, batch_size)


def _batched(model: RouterNet, function, width: int, tokenizer, records, max_len: int, batch_size: int) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            inputs = encode_router_inputs(model, tokenizer, records[start : start + batch_size], max_len)
            out.append(function(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy())
    return np.concatenate(out) if out else np.zeros((0, width), dtype=np.float32)


def save_router(model: RouterNet, out_dir: Path, meta: Mapping[str, Any] | None = None) -> Path:
    """router_args.json (constructor args + `meta`, e.g. training stats) + safetensors weights."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))
    record = {"args": model.args, "meta": dict(meta or {})}
    (out_dir / ARGS_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return out_dir


def load_router(model_dir: Path) -> tuple[RouterNet, dict[str, Any]]:
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    record = json.loads((model_dir / ARGS_FILE).read_text())
    model = RouterNet(**record["args"])
    model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)))
    return model.eval(), record.get("meta", {})
