"""End to end for the T4 tier: a tiny Llama-style decoder trained here, served by vLLM's OpenAI
server (T4Endpoint), called through T4Client over real HTTP, then taken down to check the client
fails fast and the breaker opens.

The endpoint runs with an API key (passed as VLLM_API_KEY, never on the command line), so the
authenticated path is the one exercised. Quality is not the point here (test_vllm_decoder.py
checks that); 3 epochs are enough for the model to answer in the task's format.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import pytest
import torch

from bls_router.circuit_breaker import BreakerState, CircuitBreaker
from bls_router.t4_client import T4Client
from export.decoder import DecoderArch, build_decoder, count_parameters, save_decoder
from export.tokenizer import train_tokenizer
from export.train_decoder import train_decoder
from routenlp.t4_endpoint import EndpointStartError, T4Endpoint
from routenlp_core.cascade import TierUnavailable
from tests.integration.test_vllm_decoder import SEED, _task_split

KEY_ENV = "ROUTENLP_T4_ITEST_KEY"
SECRET = "sk-itest-7d1e55a2"
START_TIMEOUT_S = 420  # ~1-2 min on 2 shared cores; generous so a slow box fails on asserts
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def t4_checkpoint(tmp_path_factory) -> tuple[Path, list[str]]:
    train, held_out = _task_split(n_classify=150, n_echo=150, n_eval_each=4, seed=SEED)
    tokenizer = train_tokenizer(
        (prompt + answer for prompt, answer in train),
        vocab_size=400,
        out_dir=tmp_path_factory.mktemp("t4_tokenizer"),
        model_max_length=128,
    )
    arch = DecoderArch(family="llama", hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128, max_positions=128)
    torch.manual_seed(SEED)
    model = build_decoder(arch, tokenizer)
    stats = train_decoder(
        model, tokenizer, train, epochs=3, batch_size=16, lr=3e-3, max_len=64, seed=SEED, progress=False
    )
    print(f"\n[timing] t4 llama {count_parameters(model):,} params trained in {stats['train_seconds']} s")
    out = save_decoder(model, tokenizer, tmp_path_factory.mktemp("t4_llama"), {"arch": arch, "training": stats})
    return out, [prompt for prompt, _ in held_out]


@pytest.mark.integration
def test_t4_endpoint_serves_completions_then_fails_fast_when_down(t4_checkpoint, tmp_path, monkeypatch):
    checkpoint, prompts = t4_checkpoint
    monkeypatch.setenv(KEY_ENV, SECRET)
    endpoint = T4Endpoint(checkpoint, tmp_path / "vllm.log", max_model_len=128, api_key_env=KEY_ENV)
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=60.0)
    client = T4Client(
        endpoint.base_url, "t4", KEY_ENV, timeout_s=60.0, max_retries=1, breaker=breaker, backoff_base_s=0.05
    )
    try:
        endpoint.start(timeout_s=START_TIMEOUT_S)
        print(f"[timing] T4 endpoint ready in {endpoint.startup_s:.1f} s")
        # The key reached the server through its environment, not its arguments (ps output).
        cmdline = Path(f"/proc/{endpoint.process.pid}/cmdline").read_bytes().decode(errors="replace")
        assert SECRET not in cmdline and "--api-key" not in cmdline

        first = client.complete(prompts[0], max_tokens=MAX_TOKENS)  # includes any lazy warm-up
        latencies = []
        for prompt in prompts:
            started = time.perf_counter()
            result = client.complete(prompt, max_tokens=MAX_TOKENS)
            latencies.append(time.perf_counter() - started)
            assert isinstance(result.text, str)
            assert 1 <= len(result.token_logprobs) <= MAX_TOKENS
            assert all(math.isfinite(lp) and lp <= 0.0 for lp in result.token_logprobs), result
            assert result.prompt_tokens > 0 and result.completion_tokens == len(result.token_logprobs)
            assert result.attempts == 1
            tier_result = result.to_tier_result()
            assert 0.0 <= tier_result.u <= 1.0 and tier_result.tokens == result.tokens
        print(
            f"[timing] first call {first.latency_s * 1e3:.0f} ms; sequential calls (<= {MAX_TOKENS} tokens): "
            f"median {statistics.median(latencies) * 1e3:.0f} ms, max {max(latencies) * 1e3:.0f} ms"
        )
        print(f"[sample] {prompts[0]!r} -> {first.text!r} logprobs {[round(lp, 3) for lp in first.token_logprobs]}")
        started = time.perf_counter()
        batch = client.complete_many(prompts * 2, max_tokens=MAX_TOKENS)
        batch_s = time.perf_counter() - started
        print(f"[timing] complete_many {len(batch)} prompts, {client.max_workers} workers: {batch_s:.2f} s")
        assert [r.text for r in batch] == [r.text for r in batch[: len(prompts)]] * 2  # greedy: deterministic

        # Without the key the server refuses (401): not retried, and not a breaker failure.
        monkeypatch.delenv(KEY_ENV)
        with pytest.raises(TierUnavailable, match=r"after 1 attempt\(s\): HTTP 401"):
            client.complete(prompts[0], max_tokens=MAX_TOKENS)
        assert breaker.state is BreakerState.CLOSED
        monkeypatch.setenv(KEY_ENV, SECRET)
    finally:
        stopping = time.perf_counter()
        endpoint.stop()
        print(f"[timing] endpoint stopped in {time.perf_counter() - stopping:.1f} s")
    assert endpoint.process is None
    assert SECRET not in (tmp_path / "vllm.log").read_text(errors="replace")  # vLLM did not log the key

    # Endpoint gone: connection refused, fast, then the breaker opens and calls stop reaching out.
    for _ in range(breaker.failure_threshold):
        started = time.perf_counter()
        with pytest.raises(TierUnavailable, match=r"cannot connect to .*refused") as err:
            client.complete(prompts[0], max_tokens=MAX_TOKENS)
        assert time.perf_counter() - started < 5.0
        assert SECRET not in str(err.value)
    assert breaker.state is BreakerState.OPEN
    attempts_before = client.stats()["attempts"]
    with pytest.raises(TierUnavailable, match="circuit breaker open"):
        client.complete(prompts[0], max_tokens=MAX_TOKENS)
    assert client.stats()["attempts"] == attempts_before  # failed fast: no request sent
    print(f"[stats] {client.stats()}")
    client.close()


@pytest.mark.integration
def test_t4_endpoint_that_dies_at_start_fails_fast_with_its_log(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["NoSuchForCausalLM"], "model_type": "no_such_model"}')
    started = time.perf_counter()
    with pytest.raises(EndpointStartError, match="exited with code") as err:
        T4Endpoint(broken, tmp_path / "vllm.log").start(timeout_s=START_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    print(f"\n[timing] broken endpoint reported in {elapsed:.1f} s")
    assert "log " in str(err.value) and len(str(err.value).splitlines()) > 3  # the log tail came along
    assert elapsed < START_TIMEOUT_S / 2  # noticed the exit, did not wait out the timeout
