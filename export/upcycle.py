"""Sparse upcycling: a pricier mixture-of-experts tier grown from a cheaper dense tier's weights.

Kept apart from export/decoder.py so that only the tiers built this way carry its code in their
build step's cache key.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from export.decoder import DecoderArch, build_decoder_config


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
        raise ValueError("cannot upcycle: the MoE's shape differs from the dense model's (moe, dense): "
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
