"""The vLLM tiers' request validation, prompt fitting, response tensors and config (no vLLM, no Triton)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from bls_router.vllm_requests import (
    DEFAULT_SAMPLING,
    SAMPLING_KEYS,
    Completion,
    RequestError,
    build_output_arrays,
    completion_from_vllm,
    fit_prompt_ids,
    parse_request,
    parse_sampling_parameters,
)
from export.triton_config import render_config
from export.vllm_tier_config import vllm_model_json, vllm_tier_spec
from routenlp_core.vllm_engine_args import EngineArgsError, read_engine_args


def _bytes(text: str | bytes) -> np.ndarray:
    return np.array([[text.encode() if isinstance(text, str) else text]], dtype=np.object_)


def _flag(value: bool) -> np.ndarray:
    return np.array([[value]], dtype=bool)


# --- sampling_parameters -------------------------------------------------------------------

def test_defaults_are_greedy_with_chosen_token_logprobs():
    assert parse_sampling_parameters(None) == {**DEFAULT_SAMPLING, "logprobs": 0}
    assert parse_sampling_parameters(b"") == parse_sampling_parameters("{}") == parse_sampling_parameters(None)
    assert DEFAULT_SAMPLING["temperature"] == 0.0


def test_values_are_converted_like_vllm_backend_clients_send_them():
    params = parse_sampling_parameters(json.dumps({"max_tokens": "32", "temperature": "0.7", "top_p": 0.9, "stop": "\n", "ignore_eos": "false"}))
    assert params == {"max_tokens": 32, "temperature": 0.7, "top_p": 0.9, "stop": ["\n"], "ignore_eos": False, "logprobs": 0}
    assert isinstance(params["max_tokens"], int)
    assert parse_sampling_parameters('{"logprobs": 3, "max_tokens": 8.0}')["logprobs"] == 3


@pytest.mark.parametrize(
    "raw, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"temprature": 0}', r"unknown sampling_parameters \['temprature'\]; valid keys: .*temperature"),
        ('{"max_tokens": 0}', r"max_tokens must be >= 1"),
        ('{"max_tokens": true}', "must be an integer"),
        ('{"max_tokens": "many"}', "must be an integer"),
        ('{"max_tokens": 1.5}', "must be an integer"),
        ('{"temperature": -1}', ">= 0"),
        ('{"temperature": NaN}', "finite number"),
        ('{"top_p": 0}', r"in \(0, 1\]"),
        ('{"logprobs": 50}', r"in \[0, 20\]"),
        ('{"n": 2}', "one answer per request"),
        ('{"stop": [""]}', "non-empty string"),
        ('{"ignore_eos": "yes"}', "true or false"),
        ('{"min_tokens": 9, "max_tokens": 4}', "exceeds max_tokens"),
        (b"\xff", "not valid UTF-8"),
    ],
)
def test_bad_sampling_parameters_are_client_errors(raw, match):
    with pytest.raises(RequestError, match=match):
        parse_sampling_parameters(raw)


def test_every_valid_key_is_accepted():
    assert "max_tokens" in SAMPLING_KEYS and "lora_name" not in SAMPLING_KEYS
    sample = {"max_tokens": 4, "min_tokens": 1, "temperature": 0.5, "top_p": 0.5, "top_k": 5, "min_p": 0.1,
              "presence_penalty": 0.1, "frequency_penalty": 0.1, "repetition_penalty": 1.1, "seed": 7,
              "stop": ["x"], "ignore_eos": True, "skip_special_tokens": False,
              "include_stop_str_in_output": True, "logprobs": 2, "n": 1}  # fmt: skip
    assert set(sample) == set(SAMPLING_KEYS)
    assert parse_sampling_parameters(json.dumps(sample)) == sample


# --- one request ---------------------------------------------------------------------------

def test_request_with_all_inputs():
    request = parse_request(
        {
            "text_input": _bytes("task: classify\ntext: a tiger\nanswer:"),
            "sampling_parameters": _bytes('{"max_tokens": 4}'),
            "exclude_input_in_output": _flag(True),
            "return_num_input_tokens": _flag(True),
            "return_logprobs": _flag(False),
        }
    )
    assert request.prompt.endswith("answer:")
    assert request.sampling == {"max_tokens": 4, "temperature": 0.0, "logprobs": 0}
    assert request.exclude_input_in_output is True
    assert request.outputs == {"num_input_tokens"}


def test_request_defaults_follow_vllm_backend():
    request = parse_request({"text_input": np.array([b"hello"], dtype=np.object_)})  # shape [1] works too
    assert request.exclude_input_in_output is False  # vllm_backend echoes the prompt by default
    assert request.outputs == frozenset()


@pytest.mark.parametrize(
    "inputs, match",
    [
        ({}, "text_input is required"),
        ({"text_input": _bytes("")}, "text_input is empty"),
        ({"text_input": _bytes("  \n")}, "text_input is empty"),
        ({"text_input": _bytes(b"\xff\xfe")}, "not valid UTF-8"),
        ({"text_input": np.array([[b"a"], [b"b"]], dtype=np.object_)}, "one prompt per request"),
        ({"text_input": _bytes("hi"), "stream": _flag(True)}, "stream=true is not supported"),
        ({"text_input": _bytes("hi"), "sampling_parameters": _bytes('{"max_tokens": -3}')}, "max_tokens must be >= 1"),
    ],
)
def test_bad_requests_are_client_errors(inputs, match):
    with pytest.raises(RequestError, match=match):
        parse_request(inputs)


# --- prompt fitting ------------------------------------------------------------------------

def test_short_prompt_is_unchanged():
    assert fit_prompt_ids([1, 5, 6, 7], max_tokens=8, max_model_len=64, bos_id=1) == [1, 5, 6, 7]


def test_long_prompt_keeps_bos_and_tail():
    ids = [1] + list(range(100, 200))  # BOS + 100 tokens
    fitted = fit_prompt_ids(ids, max_tokens=8, max_model_len=64, bos_id=1)
    assert len(fitted) == 64 - 8
    assert fitted[0] == 1 and fitted[1:] == ids[-55:]  # the 'answer:' cue at the end survives


def test_answer_budget_is_capped_at_half_the_context_as_in_training():
    ids = [1] + list(range(100, 200))
    assert len(fit_prompt_ids(ids, max_tokens=500, max_model_len=64, bos_id=1)) == 32


def test_prompt_without_bos_keeps_only_the_tail():
    ids = list(range(100, 200))
    assert fit_prompt_ids(ids, max_tokens=4, max_model_len=20, bos_id=1) == ids[-16:]
    assert fit_prompt_ids(ids, max_tokens=4, max_model_len=20, bos_id=None) == ids[-16:]


def test_fitted_prompt_always_leaves_room_for_an_answer():
    for max_model_len in (2, 3, 10, 128):
        for max_tokens in (1, 5, 1000):
            fitted = fit_prompt_ids([1] + [9] * 300, max_tokens=max_tokens, max_model_len=max_model_len, bos_id=1)
            assert 1 <= len(fitted) < max_model_len
    with pytest.raises(ValueError):
        fit_prompt_ids([1, 2], max_tokens=1, max_model_len=1, bos_id=1)


# --- engine output -> tensors --------------------------------------------------------------

def _fake_vllm_output(token_ids, logprobs, text=" animal"):
    steps = [
        {tid: SimpleNamespace(logprob=lp, rank=1, decoded_token=f"t{tid}"), 999: SimpleNamespace(logprob=-9.0, rank=2, decoded_token="x")}
        for tid, lp in zip(token_ids, logprobs)
    ]
    sequence = SimpleNamespace(text=text, token_ids=token_ids, logprobs=steps, finish_reason="stop", cumulative_logprob=sum(logprobs))
    return SimpleNamespace(outputs=[sequence], prompt_token_ids=[1, 2, 3, 4, 5])


def test_completion_picks_the_chosen_tokens_logprob():
    completion = completion_from_vllm(_fake_vllm_output([11, 2], [-0.1, -0.5]))
    assert completion.token_logprobs == [-0.1, -0.5]
    assert completion.num_input_tokens == 5 and completion.finish_reason == "stop"
    assert completion.top_logprobs[0][999]["rank"] == 2


def test_completion_without_logprobs_is_an_engine_error():
    output = _fake_vllm_output([11, 2], [-0.1, -0.5])
    output.outputs[0].logprobs = None
    with pytest.raises(RuntimeError, match="0 logprob steps for 2 tokens"):
        completion_from_vllm(output)


def _completion(logprobs=(-0.1, -0.5, -0.05)) -> Completion:
    return completion_from_vllm(_fake_vllm_output(list(range(10, 10 + len(logprobs))), list(logprobs)))


def test_outputs_always_hold_text_and_uncertainty_ready_logprobs():
    request = parse_request({"text_input": _bytes("answer:"), "exclude_input_in_output": _flag(True)})
    arrays = build_output_arrays(request, _completion())
    assert set(arrays) == {"text_output", "token_logprobs"}
    assert arrays["text_output"].shape == (1, 1) and arrays["text_output"][0, 0] == b" animal"
    logprobs = arrays["token_logprobs"]
    assert logprobs.dtype == np.float32 and logprobs.shape == (1, 3)
    # The cascade's uncertainty u = mean(1 - p(token)) reads straight from this tensor.
    u = float(np.mean(1.0 - np.exp(logprobs[0])))
    assert 0.0 < u < 1.0 and u == pytest.approx(np.mean(1 - np.exp([-0.1, -0.5, -0.05])), rel=1e-6)


def test_zero_generated_tokens_give_an_empty_row():
    request = parse_request({"text_input": _bytes("answer:")})
    assert build_output_arrays(request, _completion(())).get("token_logprobs").shape == (1, 0)


def test_optional_outputs_follow_the_return_flags():
    flags = ["return_finish_reason", "return_cumulative_logprob", "return_logprobs", "return_num_input_tokens", "return_num_output_tokens"]
    request = parse_request({"text_input": _bytes("q: "), **{flag: _flag(True) for flag in flags}})
    arrays = build_output_arrays(request, _completion())
    assert arrays["text_output"][0, 0] == b"q:  animal"  # prompt echoed by default
    assert arrays["finish_reason"][0, 0] == b"stop"
    assert arrays["cumulative_logprob"].dtype == np.float32 and arrays["cumulative_logprob"][0, 0] == pytest.approx(-0.65)
    assert arrays["num_input_tokens"].dtype == np.uint32 and arrays["num_input_tokens"].tolist() == [[5]]
    assert arrays["num_output_tokens"].tolist() == [[3]]
    steps = json.loads(arrays["logprobs"][0, 0])  # vllm_backend's format: token ids become string keys
    assert len(steps) == 3 and steps[0]["10"] == {"logprob": -0.1, "rank": 1, "decoded_token": "t10"}
    assert all(array.shape[0] == 1 for array in arrays.values())


# --- config and model.json -----------------------------------------------------------------

def test_cpu_spec_batches_and_adds_token_logprobs():
    spec = vllm_tier_spec("t2", target="cpu")
    assert spec.backend == "python" and not spec.decoupled and spec.max_batch_size == 8
    assert spec.dynamic_batching_delay_us is not None
    assert spec.parameters["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert "token_logprobs" in {t.name for t in spec.outputs}
    text = render_config(spec)
    assert 'backend: "python"' in text and "dynamic_batching" in text and "decoupled" not in text


def test_ngc_spec_is_the_stock_vllm_backend():
    cpu, ngc = vllm_tier_spec("t3", target="cpu"), vllm_tier_spec("t3", target="ngc")
    assert ngc.backend == "vllm" and ngc.decoupled and ngc.max_batch_size == 0
    assert [t.name for t in ngc.inputs] == [t.name for t in cpu.inputs]
    assert {t.name for t in ngc.outputs} == {t.name for t in cpu.outputs} - {"token_logprobs"}
    assert "decoupled: true" in render_config(ngc)


def test_spec_rejects_bad_arguments():
    with pytest.raises(ValueError, match="valid targets: cpu, ngc"):
        vllm_tier_spec("t2", target="gpu")
    with pytest.raises(ValueError, match="max_batch_size"):
        vllm_tier_spec("t2", target="cpu", max_batch_size=0)


def test_model_json_per_target():
    cpu = json.loads(vllm_model_json("hf", max_model_len=256, target="cpu"))
    assert cpu == {"model": "hf", "max_model_len": 256, "dtype": "float32", "enforce_eager": True, "seed": 0}
    ngc = json.loads(vllm_model_json("/models/t2/1/hf", max_model_len=256, target="ngc", gpu_memory_utilization=0.9))
    assert ngc["gpu_memory_utilization"] == 0.9 and "enforce_eager" not in ngc
    with pytest.raises(ValueError, match="max_model_len"):
        vllm_model_json("hf", max_model_len=1, target="cpu")


def test_engine_args_resolve_the_checkpoint_from_the_version_folder(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "model.json").write_text(vllm_model_json("hf", max_model_len=64, target="cpu"))
    args = read_engine_args(tmp_path)
    assert args["model"] == str((tmp_path / "hf").resolve()) and args["max_model_len"] == 64


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "model.json not found"),
        ("{", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"dtype": "float32"}', 'needs "model"'),
        ('{"model": "missing_hf"}', "missing_hf.*does not exist"),
        ('{"model": "."}', "no config.json"),
    ],
)
def test_engine_args_errors_name_the_cause(tmp_path, content, match):
    if content is not None:
        (tmp_path / "model.json").write_text(content)
    with pytest.raises(EngineArgsError, match=match):
        read_engine_args(tmp_path)
