"""Depth up-scaling: a pricier tier grown from a cheaper tier's trained weights by stacking layers
(as SOLAR was grown from Mistral). Function-preserving: each extra layer starts as a copy of the
source's last layer with its attention and MLP output projections at zero, an identity block on the
residual stream, so the grown model answers exactly like its source until it is trained further.
A dense source becomes a mixture first (export/upcycle.py) when the new shape has experts.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from export.decoder import DecoderArch, build_decoder_config
from export.upcycle import upcycle

# Output projections of a block: zero them and the block adds nothing to the residual stream.
_BLOCK_OUTPUTS = ("self_attn.o_proj.weight", "mlp.down_proj.weight", "mlp.experts.down_proj")


def grow(source: PreTrainedModel, arch: DecoderArch, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A decoder of shape `arch` (the source's width, at least its depth) that answers exactly like
    the trained `source`."""
    layers = source.config.num_hidden_layers
    if arch.layers < layers:
        raise ValueError(f"cannot grow {layers} layers into {arch.layers}: growing never drops layers")
    is_mixture = bool(getattr(source.config, "num_local_experts", None))
    if arch.family == "mixtral" and not is_mixture:
        source = upcycle(source, replace(arch, layers=layers), tokenizer)
    elif arch.family != "mixtral" and is_mixture:
        raise ValueError(f"cannot grow a mixture of experts into a dense {arch.family}")
    if arch.layers == layers:
        return source
    config = build_decoder_config(arch, tokenizer)
    # The source's rotary base and norm epsilon: the copied weights only mean the same with them.
    config.rope_parameters = dict(source.config.rope_parameters)
    config.rms_norm_eps = source.config.rms_norm_eps
    grown = AutoModelForCausalLM.from_config(config).to(torch.float32)
    source_state = source.state_dict()
    last = f"layers.{layers - 1}."
    state = {}
    for name, tensor in grown.state_dict().items():
        index = _layer_index(name)
        if index is None or index < layers:
            state[name] = source_state[name].clone()
            continue
        value = source_state[name.replace(f"layers.{index}.", last)].clone()
        state[name] = torch.zeros_like(value) if name.endswith(_BLOCK_OUTPUTS) else value
    missing = [n for n, t in grown.state_dict().items() if state[n].shape != t.shape]
    if missing:
        raise ValueError(f"cannot grow: the new shape's width differs from the source's ({', '.join(missing[:3])} ...)")
    grown.load_state_dict(state)
    return grown


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None
