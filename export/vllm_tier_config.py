"""Triton config and engine arguments (model.json) of the T2/T3 vLLM tiers, for both targets.

  cpu  this Triton build: our python-backend adapter (bls_router/triton_models/vllm_tier.py),
       not decoupled, max_batch_size > 0 with dynamic batching; execute() queues the requests for
       an engine thread, which steps the engine with up to `engine_batch` of them inside at once.
  ngc  stock NGC tritonserver + vLLM image: backend "vllm", decoupled, max_batch_size 0, as
       vllm_backend requires.

Both use vllm_backend's tensor names (see bls_router/vllm_requests.py); the cpu adapter adds
`token_logprobs`. model.json holds engine arguments passed straight to vLLM, as in vllm_backend.
Its "model" may be relative: our adapter resolves it from the version folder, while the stock
backend resolves it from the server's working directory, so ngc needs the path as the container
sees it (e.g. /models/t2/3/hf) or a hub id.
"""

from __future__ import annotations

import json
from typing import Any

from export.triton_config import ModelSpec, TensorSpec
from routenlp_core import vllm_engine_args as engine_args
from routenlp_core.contract import TARGETS
from routenlp_core.vllm_engine_args import EngineArgsError, read_engine_args  # noqa: F401  (model.py of older versions)

# A generation takes 100+ ms on CPU, so waiting 1 ms to group concurrent requests is cheap.
DYNAMIC_BATCHING_DELAY_US = 1000

_FLAGS = ("exclude_input_in_output", "stream", "return_finish_reason", "return_cumulative_logprob",
          "return_logprobs", "return_num_input_tokens", "return_num_output_tokens")  # fmt: skip
INPUTS = (
    TensorSpec("text_input", "BYTES", (1,)),
    TensorSpec("sampling_parameters", "BYTES", (1,), optional=True),
    *(TensorSpec(flag, "BOOL", (1,), optional=True) for flag in _FLAGS),
)
OUTPUTS = (
    TensorSpec("text_output", "BYTES", (-1,)),
    TensorSpec("finish_reason", "BYTES", (-1,)),
    TensorSpec("cumulative_logprob", "FP32", (-1,)),
    TensorSpec("logprobs", "BYTES", (-1,)),
    TensorSpec("num_input_tokens", "UINT32", (1,)),
    TensorSpec("num_output_tokens", "UINT32", (-1,)),
)
# Chosen-token logprobs for the cascade's uncertainty; only the cpu adapter produces it.
TOKEN_LOGPROBS = TensorSpec("token_logprobs", "FP32", (-1,))

_CPU_ENGINE_DEFAULTS: dict[str, Any] = {"dtype": "float32", "enforce_eager": True, "seed": 0}
# T2 and T3 share one GPU by default; a site with a GPU per tier passes a larger value.
_NGC_ENGINE_DEFAULTS: dict[str, Any] = {"gpu_memory_utilization": 0.45, "dtype": "auto"}


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")


def vllm_tier_spec(name: str, *, target: str, max_batch_size: int = 8) -> ModelSpec:
    """The Triton model spec of one vLLM tier (max_batch_size only applies to cpu)."""
    _check_target(target)
    if target == "ngc":
        return ModelSpec(name=name, inputs=INPUTS, outputs=OUTPUTS, backend="vllm", max_batch_size=0, decoupled=True, instance_kind="KIND_MODEL")
    if max_batch_size < 1:
        raise ValueError(f"cpu tier {name!r} needs max_batch_size >= 1, got {max_batch_size}")
    return ModelSpec(
        name=name,
        inputs=INPUTS,
        outputs=(*OUTPUTS, TOKEN_LOGPROBS),
        backend="python",
        max_batch_size=max_batch_size,
        dynamic_batching_delay_us=DYNAMIC_BATCHING_DELAY_US,
        parameters={
            engine_args.KVCACHE_PARAMETER: engine_args.KVCACHE_GIB_DEFAULT,
            engine_args.ENGINE_BATCH_PARAMETER: engine_args.ENGINE_BATCH_DEFAULT,
        },
    )


def vllm_model_json(model_path: str, *, max_model_len: int, target: str, **engine_args: Any) -> str:
    """model.json text: vLLM engine arguments for `target`; engine_args override the defaults."""
    _check_target(target)
    if not model_path:
        raise ValueError("model_path is empty")
    if not isinstance(max_model_len, int) or max_model_len < 2:
        raise ValueError(f"max_model_len must be an integer >= 2, got {max_model_len!r}")
    defaults = _CPU_ENGINE_DEFAULTS if target == "cpu" else _NGC_ENGINE_DEFAULTS
    args = {**defaults, "model": model_path, "max_model_len": max_model_len, **engine_args}
    return json.dumps(args, indent=2, sort_keys=True) + "\n"
