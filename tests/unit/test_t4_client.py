"""T4Client and CircuitBreaker against a real local HTTP server whose answers each test scripts.

The server (ThreadingHTTPServer on 127.0.0.1, free port) pops one scripted action per request and
records every request it saw (headers and body), so tests can assert how many attempts were made
and that an open breaker sent nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bls_router.circuit_breaker import BreakerState, CircuitBreaker
from bls_router.t4_client import T4Client
from routenlp_core.cascade import TierResult, TierUnavailable

SECRET = "sk-test-3f9c1e0b-DO-NOT-LEAK"
KEY_ENV = "ROUTENLP_T4_TEST_KEY"


def completion_body(text=" animal", logprobs=(-0.1, -0.5), prompt_tokens=7) -> dict:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "t4",
        "choices": [{"index": 0, "text": text, "finish_reason": "stop",
                     "logprobs": {"tokens": ["a"] * len(logprobs), "token_logprobs": list(logprobs)}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(logprobs),
                  "total_tokens": prompt_tokens + len(logprobs)},
    }  # fmt: skip


class ScriptedServer:
    """Actions: ("json", status, body_dict, headers), ("raw", status, bytes), ("sleep", seconds),
    ("echo_auth", status): answer with the request's Authorization header in the body,
    ("echo_prompt",): a completion whose text is the request's prompt."""

    def __init__(self) -> None:
        self.script: deque = deque()
        self.requests: list[dict] = []
        self.arrivals: list[float] = []
        self.release = threading.Event()  # ends "sleep" actions early at teardown
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.arrivals.append(time.monotonic())
                request = json.loads(body)
                owner.requests.append({"path": self.path, "headers": dict(self.headers), "json": request})
                action = owner.script.popleft() if owner.script else ("json", 599, {"error": "unscripted"}, {})
                try:
                    self._act(action, request)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): expected

            def _act(self, action, request) -> None:
                kind = action[0]
                if kind == "sleep":
                    owner.release.wait(action[1])
                    self._send(200, json.dumps(completion_body()).encode(), {})
                elif kind == "json":
                    _, status, body, headers = action
                    self._send(status, json.dumps(body).encode(), headers)
                elif kind == "raw":
                    self._send(action[1], action[2], {})
                elif kind == "echo_auth":
                    self._send(action[1], f"bad key {self.headers.get('Authorization')}".encode(), {})
                elif kind == "echo_prompt":
                    self._send(200, json.dumps(completion_body(text=request["prompt"])).encode(), {})

            def _send(self, status: int, payload: bytes, headers: dict) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        # A short poll interval keeps shutdown() (once per test) from costing 0.5 s.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def then(self, *actions) -> "ScriptedServer":
        self.script.extend(actions)
        return self

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


OK = ("json", 200, completion_body(), {})


@pytest.fixture
def server():
    srv = ScriptedServer()
    yield srv
    srv.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_client(server):
    clients = []

    def make(**kwargs) -> T4Client:
        kwargs.setdefault("timeout_s", 2.0)
        kwargs.setdefault("max_retries", 2)
        kwargs.setdefault("backoff_base_s", 0.01)
        client = T4Client(server.base_url, "t4", **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_success_returns_text_logprobs_and_usage(server, make_client, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.then(OK)
    result = make_client(api_key_env=KEY_ENV).complete("task: classify\ntext: a tiger\nanswer:", max_tokens=8)
    assert result.text == " animal"
    assert result.token_logprobs == [-0.1, -0.5]
    assert (result.prompt_tokens, result.completion_tokens, result.tokens) == (7, 2, 9)
    assert result.attempts == 1
    (request,) = server.requests
    assert request["path"] == "/v1/completions"
    assert request["json"] == {
        "model": "t4", "prompt": "task: classify\ntext: a tiger\nanswer:", "max_tokens": 8,
        "temperature": 0, "logprobs": 1,
    }  # fmt: skip
    assert "Authorization" not in request["headers"]  # no key configured: local endpoint, no auth

    tier_result = result.to_tier_result()
    assert isinstance(tier_result, TierResult) and tier_result.tokens == 9
    assert tier_result.u == pytest.approx(((1 - 0.904837) + (1 - 0.606531)) / 2, abs=1e-5)


def test_429_then_success_is_retried_honouring_retry_after(server, make_client):
    server.then(("json", 429, {"error": "slow down"}, {"Retry-After": "5"}), OK)
    client = make_client(retry_after_cap_s=0.2)  # Retry-After 5 s is capped to 0.2 s
    result = client.complete("hi")
    assert result.attempts == 2 and len(server.requests) == 2
    gap = server.arrivals[1] - server.arrivals[0]
    assert 0.15 <= gap < 2.0, gap
    assert client.stats()["retries"] == 1
    assert client.breaker.state is BreakerState.CLOSED


def test_500_every_time_fails_after_max_retries_plus_one_attempts(server, make_client):
    server.then(*[("json", 500, {"error": "boom"}, {})] * 5)
    client = make_client(max_retries=2)
    with pytest.raises(TierUnavailable, match=r"after 3 attempt\(s\): HTTP 500") as err:
        client.complete("hi")
    assert "boom" in str(err.value)
    assert len(server.requests) == 3


def test_4xx_other_than_429_is_not_retried_and_does_not_trip_the_breaker(server, make_client):
    server.then(("json", 400, {"error": "prompt too long"}, {}), OK)
    client = make_client(breaker=CircuitBreaker(failure_threshold=1))
    with pytest.raises(TierUnavailable, match=r"after 1 attempt\(s\): HTTP 400.*prompt too long"):
        client.complete("hi")
    assert len(server.requests) == 1
    assert client.breaker.state is BreakerState.CLOSED  # the endpoint answered: it is up


def test_slow_response_times_out_within_bounded_wall_time(server, make_client):
    server.then(("sleep", 5.0), ("sleep", 5.0))
    client = make_client(timeout_s=0.3, max_retries=1)
    started = time.perf_counter()
    with pytest.raises(TierUnavailable, match=r"after 2 attempt\(s\): timeout after 0.3s") as err:
        client.complete("hi")
    elapsed = time.perf_counter() - started
    assert "ReadTimeout" in str(err.value)
    assert elapsed < 2.0, elapsed  # 2 x 0.3 s + backoff, nowhere near the server's 5 s
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (("raw", 200, b"<html>not json"), r"malformed response: HTTP 200 body is not JSON: '<html>not json'"),
        (("json", 200, {"choices": []}, {}), r"malformed response: missing field choices\[0\]\.text"),
        (("json", 200, {"choices": [{"text": "x", "logprobs": None}]}, {}),
         r"malformed response: missing field choices\[0\]\.logprobs\.token_logprobs"),
        (("json", 200, {k: v for k, v in completion_body().items() if k != "usage"}, {}),
         r"malformed response: missing field usage\.prompt_tokens"),
        (("json", 200, completion_body(logprobs=("x",)), {}), r"token_logprobs is not a list of numbers"),
    ],
)  # fmt: skip
def test_malformed_answers_give_a_clear_error_without_retry(server, make_client, action, message):
    server.then(action, OK)
    with pytest.raises(TierUnavailable, match=message):
        make_client().complete("hi")
    assert len(server.requests) == 1  # a broken answer is not retried


def test_connection_refused_is_reported(server):
    url = server.base_url
    server.close()  # nothing listens on the port any more
    client = T4Client(url, "t4", timeout_s=1.0, max_retries=1, backoff_base_s=0.01)
    with pytest.raises(TierUnavailable, match=r"after 2 attempt\(s\): cannot connect to .*refused"):
        client.complete("hi")
    client.close()


def test_breaker_opens_fails_fast_then_half_opens_and_closes(server, make_client):
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=30.0, clock=clock)
    client = make_client(max_retries=0, breaker=breaker)
    server.then(("json", 503, {"error": "down"}, {}), ("json", 502, {"error": "down"}, {}))
    for _ in range(2):
        with pytest.raises(TierUnavailable, match="HTTP 50"):
            client.complete("hi")
    assert breaker.state is BreakerState.OPEN
    seen = len(server.requests)

    started = time.perf_counter()
    with pytest.raises(TierUnavailable, match="circuit breaker open") as err:
        client.complete("hi")
    assert time.perf_counter() - started < 0.05
    assert "next trial in 30.0s" in str(err.value)
    assert len(server.requests) == seen  # failed fast: the server saw nothing

    clock.now += 30.0
    assert breaker.state is BreakerState.HALF_OPEN
    server.then(OK)
    assert client.complete("hi").text == " animal"
    assert breaker.state is BreakerState.CLOSED
    stats = client.stats()
    assert stats["rejected_by_breaker"] == 1 and stats["breaker"]["times_opened"] == 1


def test_failed_half_open_trial_reopens_the_breaker(server, make_client):
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=10.0, clock=clock)
    client = make_client(max_retries=0, breaker=breaker)
    server.then(("json", 500, {}, {}), ("json", 500, {}, {}))
    with pytest.raises(TierUnavailable):
        client.complete("hi")
    clock.now += 10.0
    with pytest.raises(TierUnavailable, match="HTTP 500"):  # the trial call reaches the server
        client.complete("hi")
    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_trial() == 10.0  # cool-down restarted
    assert len(server.requests) == 2


def test_half_open_lets_exactly_one_trial_through():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=5.0, clock=clock)
    breaker.record_failure()
    assert not breaker.allow()
    clock.now += 5.0
    allowed = []
    threads = [threading.Thread(target=lambda: allowed.append(breaker.allow())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(allowed) == [False] * 7 + [True]
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_api_key_is_sent_rotated_and_never_leaked(server, make_client, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)  # httpx/httpcore debug logs included
    monkeypatch.setenv(KEY_ENV, SECRET)
    client = make_client(api_key_env=KEY_ENV, max_retries=1)
    server.then(OK)
    client.complete("hi")
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {SECRET}"

    # A server that echoes the key in its error body, twice (retried, so logged as a warning too).
    server.then(("echo_auth", 500), ("echo_auth", 500))
    with pytest.raises(TierUnavailable) as err:
        client.complete("hi")
    message = str(err.value)
    assert "HTTP 500" in message and "bad key Bearer ***" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no httpx request kept
    # 401 is not retried and does not leak either.
    server.then(("echo_auth", 401))
    with pytest.raises(TierUnavailable) as err401:
        client.complete("hi")
    assert "HTTP 401" in str(err401.value)

    text = "\n".join([message, str(err401.value), repr(client), str(client.stats()), caplog.text])
    assert "HTTP Request: POST" in caplog.text  # httpx's own logs were captured too
    assert "T4 attempt 1/2 failed" in caplog.text  # the retry was logged...
    assert SECRET not in text  # ...without the key
    assert f"api_key_env='{KEY_ENV}' (set)" in repr(client)

    monkeypatch.setenv(KEY_ENV, "sk-rotated")  # read per request: rotation needs no restart
    server.then(OK)
    client.complete("hi")
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer sk-rotated"


def test_complete_many_keeps_prompt_order_and_reports_failures(server, make_client):
    # Each answer echoes its prompt, so order can be checked whatever order requests arrive in.
    prompts = [f"p{i}" for i in range(6)]
    client = make_client(max_workers=3, max_retries=0)
    server.then(*[("echo_prompt",)] * 6)
    results = client.complete_many(prompts, max_tokens=4)
    assert [r.text for r in results] == prompts
    assert len(server.requests) == 6

    server.then(*[("echo_prompt",)] * 3, ("json", 400, {"error": "bad"}, {}))
    results = client.complete_many(prompts[:4], return_exceptions=True)
    assert sum(isinstance(r, TierUnavailable) for r in results) == 1  # which prompt hit it depends on timing
    server.then(OK, ("json", 400, {"error": "bad"}, {}))
    with pytest.raises(TierUnavailable, match="HTTP 400"):
        client.complete_many(["a", "b"])
