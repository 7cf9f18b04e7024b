"""Requests and responses of the T2/T3 vLLM tiers, in plain Python (no Triton, no vLLM imports).

The tensor names follow triton-inference-server/vllm_backend, so routing code sends the same
request to our CPU adapter (bls_router/triton_models/vllm_tier.py) and to a stock NGC vllm
backend:

  inputs   text_input (BYTES), optional sampling_parameters (BYTES, JSON object),
           exclude_input_in_output, stream and the return_* flags (BOOL)
  outputs  text_output always; finish_reason, cumulative_logprob, logprobs (JSON),
           num_input_tokens, num_output_tokens only when their return_* flag is true
           (vllm_backend's rule); token_logprobs (FP32, one per generated token) always. That
           last one is ours: the cascade's uncertainty u = mean(1 - exp(logprob)) needs it, and
           the stock backend only offers it inside the `logprobs` JSON.

Differences from vllm_backend, on purpose:
  * default temperature is 0 (greedy), not vLLM's 1.0: tiers answer deterministically. Send
    "temperature" explicitly to get the same behaviour on both targets.
  * sampling_parameters are validated (unknown keys and bad values are client errors);
    vllm_backend passes them to SamplingParams unchecked.
  * `logprobs` JSON is filled whenever return_logprobs is set (vllm_backend sends "null" unless
    sampling_parameters also asks for "logprobs").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from routenlp_core.contract import RequestError

TEXT_INPUT = "text_input"
SAMPLING_PARAMETERS = "sampling_parameters"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
STREAM = "stream"
# return_<flag> input -> the output it switches on (names as in vllm_backend).
RETURN_FLAGS = {
    "return_finish_reason": "finish_reason",
    "return_cumulative_logprob": "cumulative_logprob",
    "return_logprobs": "logprobs",
    "return_num_input_tokens": "num_input_tokens",
    "return_num_output_tokens": "num_output_tokens",
}
TEXT_OUTPUT = "text_output"
TOKEN_LOGPROBS = "token_logprobs"
INPUT_NAMES = (TEXT_INPUT, SAMPLING_PARAMETERS, EXCLUDE_INPUT_IN_OUTPUT, STREAM, *RETURN_FLAGS)

DEFAULT_SAMPLING: dict[str, Any] = {"max_tokens": 16, "temperature": 0.0}
# vLLM's default ModelConfig.max_logprobs; a larger request fails inside the engine.
MAX_TOP_LOGPROBS = 20


# --- sampling_parameters ------------------------------------------------------------------

def _as_int(key: str, value: Any) -> int:
    # bool is an int subclass in Python; `"max_tokens": true` is a mistake, not 1.
    if isinstance(value, bool):
        raise RequestError(f"sampling_parameters.{key} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):  # vllm_backend's sample clients send numbers as strings
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise RequestError(f"sampling_parameters.{key} must be an integer, got {value!r}")


def _as_float(key: str, value: Any) -> float:
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise RequestError(f"sampling_parameters.{key} must be a finite number, got {value!r}")
    return number


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RequestError(f"sampling_parameters.{key} must be true or false, got {value!r}")


def _as_stop(key: str, value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"sampling_parameters.{key} must be a non-empty string or a list of them, got {value!r}")
    return stops


# key -> (converter, check on the converted value, what the check demands)
_FIELDS: dict[str, tuple[Any, Any, str]] = {
    "max_tokens": (_as_int, lambda v: v >= 1, ">= 1"),
    "min_tokens": (_as_int, lambda v: v >= 0, ">= 0"),
    "temperature": (_as_float, lambda v: v >= 0, ">= 0"),
    "top_p": (_as_float, lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": (_as_int, lambda v: v >= -1, "-1 or 0 (disabled) or >= 1"),
    "min_p": (_as_float, lambda v: 0 <= v <= 1, "in [0, 1]"),
    "presence_penalty": (_as_float, lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "frequency_penalty": (_as_float, lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "repetition_penalty": (_as_float, lambda v: v > 0, "> 0"),
    "seed": (_as_int, lambda v: True, "an integer"),
    "stop": (_as_stop, lambda v: True, "strings"),
    "ignore_eos": (_as_bool, lambda v: True, "a boolean"),
    "skip_special_tokens": (_as_bool, lambda v: True, "a boolean"),
    "include_stop_str_in_output": (_as_bool, lambda v: True, "a boolean"),
    "logprobs": (_as_int, lambda v: 0 <= v <= MAX_TOP_LOGPROBS, f"in [0, {MAX_TOP_LOGPROBS}]"),
    # One answer per request: the response tensors carry one sequence.
    "n": (_as_int, lambda v: v == 1, "1 (one answer per request)"),
}
SAMPLING_KEYS = tuple(sorted(_FIELDS))


def parse_sampling_parameters(raw: str | bytes | None) -> dict[str, Any]:
    """Validated keyword arguments for vllm.SamplingParams from the sampling_parameters JSON.

    Defaults fill what the client leaves out; `logprobs` is always at least 0, because the
    chosen token's logprob (token_logprobs) is part of every answer.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("sampling_parameters is not valid UTF-8") from None
    given: Any = {}
    if raw is not None and raw.strip():
        try:
            given = json.loads(raw)
        except json.JSONDecodeError as err:
            raise RequestError(f"sampling_parameters is not valid JSON ({err.msg} at char {err.pos}): {raw[:80]!r}") from None
    if not isinstance(given, dict):
        raise RequestError(f"sampling_parameters must be a JSON object, got {type(given).__name__}")
    unknown = sorted(set(given) - set(_FIELDS))
    if unknown:
        raise RequestError(f"unknown sampling_parameters {unknown}; valid keys: {', '.join(SAMPLING_KEYS)}")
    params = dict(DEFAULT_SAMPLING)
    for key, value in given.items():
        convert, check, demand = _FIELDS[key]
        converted = convert(key, value)
        if not check(converted):
            raise RequestError(f"sampling_parameters.{key} must be {demand}, got {value!r}")
        params[key] = converted
    if params.get("min_tokens", 0) > params["max_tokens"]:
        raise RequestError(f"sampling_parameters.min_tokens ({params['min_tokens']}) exceeds max_tokens ({params['max_tokens']})")
    params.setdefault("logprobs", 0)
    return params


# --- one request's inputs -----------------------------------------------------------------

@dataclass(frozen=True)
class TierRequest:
    prompt: str
    sampling: dict[str, Any]  # keyword arguments for vllm.SamplingParams
    exclude_input_in_output: bool
    outputs: frozenset[str]  # optional outputs switched on by return_* flags


def _single(name: str, array: np.ndarray) -> Any:
    # The dynamic batcher groups requests; each request carries one prompt (batch dimension 1).
    if array.size != 1:
        raise RequestError(
            f"{name} must hold exactly one element per request (shape [1, 1]), got shape {list(array.shape)}; "
            "send one prompt per request, Triton batches requests itself"
        )
    return array.reshape(-1)[0]


def _flag(inputs: Mapping[str, np.ndarray], name: str) -> bool:
    array = inputs.get(name)
    return False if array is None else bool(_single(name, array))


def parse_request(inputs: Mapping[str, np.ndarray]) -> TierRequest:
    """Validate one request's input arrays (name -> numpy array as Triton hands them over)."""
    if TEXT_INPUT not in inputs:
        raise RequestError(f"{TEXT_INPUT} is required")
    prompt = _single(TEXT_INPUT, inputs[TEXT_INPUT])
    if isinstance(prompt, bytes):
        try:
            prompt = prompt.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"{TEXT_INPUT} is not valid UTF-8") from None
    if not isinstance(prompt, str):
        raise RequestError(f"{TEXT_INPUT} must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise RequestError(f"{TEXT_INPUT} is empty")
    if _flag(inputs, STREAM):
        raise RequestError("stream=true is not supported: this tier answers once per request (not decoupled)")
    raw_params = inputs.get(SAMPLING_PARAMETERS)
    sampling = parse_sampling_parameters(None if raw_params is None else _single(SAMPLING_PARAMETERS, raw_params))
    return TierRequest(
        prompt=prompt,
        sampling=sampling,
        # vllm_backend's non-streaming default echoes the prompt in text_output.
        exclude_input_in_output=_flag(inputs, EXCLUDE_INPUT_IN_OUTPUT),
        outputs=frozenset(output for flag, output in RETURN_FLAGS.items() if _flag(inputs, flag)),
    )


# --- prompts longer than the engine allows --------------------------------------------------

def fit_prompt_ids(ids: Sequence[int], *, max_tokens: int, max_model_len: int, bos_id: int | None) -> list[int]:
    """Prompt token ids cut from the left so that the answer has room, as at training time.

    Mirrors export.train_decoder.encode_pair: the answer keeps up to half of max_model_len and
    the prompt loses its *start* (its end holds the 'answer:' cue), keeping a leading BOS. A
    prompt that leaves that room is returned unchanged; vLLM then stops at max_model_len.
    """
    if max_model_len < 2:
        raise ValueError(f"max_model_len must be >= 2, got {max_model_len}")
    answer_budget = max(1, min(max_tokens, max_model_len // 2))
    keep = max_model_len - answer_budget
    ids = list(ids)
    if len(ids) <= keep:
        return ids
    head = ids[:1] if bos_id is not None and ids and ids[0] == bos_id and keep > 1 else []
    return head + ids[len(head):][-(keep - len(head)):]


# --- engine output -> response tensors --------------------------------------------------------

@dataclass(frozen=True)
class Completion:
    """One generated answer, engine-independent."""

    text: str
    token_ids: list[int]
    token_logprobs: list[float]  # chosen token's logprob per generated token
    finish_reason: str | None
    cumulative_logprob: float | None
    num_input_tokens: int
    # Per step {token_id: {"logprob", "rank", "decoded_token"}}: the vllm_backend `logprobs` JSON.
    top_logprobs: list[dict[int, dict[str, Any]]]


def completion_from_vllm(request_output: Any) -> Completion:
    """Completion from a vllm.RequestOutput (read by attribute, so tests can pass fakes)."""
    sequence = request_output.outputs[0]
    token_ids = list(sequence.token_ids)
    steps = list(sequence.logprobs or [])
    if len(steps) != len(token_ids):
        raise RuntimeError(f"engine returned {len(steps)} logprob steps for {len(token_ids)} tokens")
    top = [
        {int(tid): {"logprob": float(lp.logprob), "rank": lp.rank, "decoded_token": lp.decoded_token} for tid, lp in step.items()}
        for step in steps
    ]
    return Completion(
        text=sequence.text,
        token_ids=token_ids,
        token_logprobs=[step[tid]["logprob"] for step, tid in zip(top, token_ids)],
        finish_reason=None if sequence.finish_reason is None else str(sequence.finish_reason),
        cumulative_logprob=sequence.cumulative_logprob,
        num_input_tokens=len(request_output.prompt_token_ids),
        top_logprobs=top,
    )


def _bytes_cell(text: str) -> np.ndarray:
    return np.array([[text.encode("utf-8")]], dtype=np.object_)


def build_output_arrays(request: TierRequest, completion: Completion) -> dict[str, np.ndarray]:
    """Output name -> array for one request; leading dimension 1 is this request's batch slot."""
    text = completion.text if request.exclude_input_in_output else request.prompt + completion.text
    arrays = {
        TEXT_OUTPUT: _bytes_cell(text),
        TOKEN_LOGPROBS: np.array([completion.token_logprobs], dtype=np.float32).reshape(1, -1),
    }
    if "finish_reason" in request.outputs:
        arrays["finish_reason"] = _bytes_cell(str(completion.finish_reason))
    if "cumulative_logprob" in request.outputs:
        cumulative = completion.cumulative_logprob
        if cumulative is None:  # not computed by the engine: the sum is the same number
            cumulative = float(sum(completion.token_logprobs))
        arrays["cumulative_logprob"] = np.array([[cumulative]], dtype=np.float32)
    if "logprobs" in request.outputs:
        arrays["logprobs"] = _bytes_cell(json.dumps(completion.top_logprobs))
    if "num_input_tokens" in request.outputs:
        arrays["num_input_tokens"] = np.array([[completion.num_input_tokens]], dtype=np.uint32)
    if "num_output_tokens" in request.outputs:
        arrays["num_output_tokens"] = np.array([[len(completion.token_ids)]], dtype=np.uint32)
    return arrays
