"""HTTP client for the T4 tier: an OpenAI-compatible POST {base_url}/completions endpoint.

Greedy completions with the chosen token's logprob per generated token (the cascade's u needs
them) and the billed token counts. Every failure surfaces as routenlp_core.cascade.TierUnavailable so
the cascade falls back to T3; the message says what happened (HTTP status, timeout, connection
refused, malformed answer, breaker open).

Retries: bounded, short exponential backoff with jitter, only for failures a retry can fix
(connect errors, timeouts, 429, 5xx); Retry-After is honoured up to a cap so one slow endpoint
cannot hold a request past its SLA. Other 4xx answers are the request's fault and are not retried.

The API key is read from the environment variable named by `api_key_env` on every request (a
rotated key is picked up without a restart) and never appears in messages, logs or repr: every
message is passed through `_redact`, and TierUnavailable is raised `from None` so the httpx
request (whose headers hold the key) is not kept on the exception chain.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from bls_router.circuit_breaker import CircuitBreaker
from routenlp_core.cascade import TierResult, TierUnavailable
from routenlp_core.uncertainty import generation_uncertainty

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
BODY_SNIPPET_CHARS = 200  # enough of an error body to diagnose, not a log flood


@dataclass(frozen=True)
class T4Completion:
    text: str
    token_logprobs: list[float]  # logprob of each generated (chosen) token
    prompt_tokens: int
    completion_tokens: int
    attempts: int  # HTTP requests this call made (1 + retries)
    latency_s: float

    @property
    def tokens(self) -> int:
        """Tokens billed at T4's price: prompt + completion."""
        return self.prompt_tokens + self.completion_tokens

    def to_tier_result(self) -> TierResult:
        return TierResult(output=self.text, u=generation_uncertainty(self.token_logprobs), tokens=self.tokens)


class _AttemptFailed(Exception):
    """One attempt's failure, before it is turned into TierUnavailable."""

    def __init__(self, message: str, *, retryable: bool, endpoint_fault: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        # False for answers that prove the endpoint is up (4xx): they must not trip the breaker.
        self.endpoint_fault = endpoint_fault
        self.retry_after = retry_after


class T4Client:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "",
        timeout_s: float = 10.0,
        max_retries: int = 2,
        breaker: CircuitBreaker | None = None,
        *,
        max_workers: int = 4,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 1.0,
        retry_after_cap_s: float = 2.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url:
            raise ValueError("T4Client needs a base_url (e.g. http://127.0.0.1:8000/v1)")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.max_workers = max_workers
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.retry_after_cap_s = retry_after_cap_s
        # One pooled client shared by all threads (httpx.Client is thread-safe); the timeout bounds
        # each phase (connect, write, read, pool wait) of every attempt.
        self._http = httpx.Client(
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=max_workers, max_keepalive_connections=max_workers),
            transport=transport,
        )
        self._stats_lock = threading.Lock()
        self._stats = {"calls": 0, "succeeded": 0, "failed": 0, "rejected_by_breaker": 0, "attempts": 0, "retries": 0}

    @classmethod
    def from_tier(
        cls, tier: Any, base_url: str | None = None, breaker: CircuitBreaker | None = None, **kwargs: Any
    ) -> "T4Client":
        """A client for a portfolio Tier; `base_url` is the local endpoint's when the tier has none."""
        return cls(
            base_url or tier.base_url, tier.model, tier.api_key_env, tier.timeout_s, tier.max_retries, breaker, **kwargs
        )

    # ---- public calls -------------------------------------------------------------------------

    def complete(self, prompt: str, max_tokens: int = 32) -> T4Completion:
        """One greedy completion; raises TierUnavailable if T4 cannot answer."""
        self._count("calls")
        if not self.breaker.allow():
            self._count("rejected_by_breaker")
            wait = self.breaker.seconds_until_trial()
            when = f"next trial in {wait:.1f}s" if wait > 0 else "a trial call is in flight"
            raise TierUnavailable(
                f"T4 circuit breaker open (endpoint failed {self.breaker.failure_threshold}+ times in a row); "
                f"failing fast without a request, {when}"
            )
        started = time.perf_counter()
        try:
            text, logprobs, usage, attempts = self._with_retries(prompt, max_tokens)
        except _AttemptFailed as failure:
            (self.breaker.record_failure if failure.endpoint_fault else self.breaker.record_success)()
            self._count("failed")
            raise TierUnavailable(self._redact(failure.message)) from None
        except BaseException:
            self.breaker.record_failure()  # a bug or interrupt must not leave a half-open trial pending
            self._count("failed")
            raise
        self.breaker.record_success()
        self._count("succeeded")
        return T4Completion(text, logprobs, usage[0], usage[1], attempts, time.perf_counter() - started)

    def complete_many(
        self, prompts: Sequence[str], max_tokens: int = 32, return_exceptions: bool = False
    ) -> list[T4Completion | TierUnavailable]:
        """Completions for many prompts, `max_workers` requests in flight, results in prompt order.

        With return_exceptions, a prompt T4 could not answer yields its TierUnavailable in place;
        otherwise the first failure (in prompt order) is raised after all requests finished.
        """

        def one(prompt: str) -> T4Completion | TierUnavailable:
            try:
                return self.complete(prompt, max_tokens)
            except TierUnavailable as err:
                return err

        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="t4") as pool:
            results = list(pool.map(one, prompts))
        if not return_exceptions:
            for result in results:
                if isinstance(result, TierUnavailable):
                    raise result
        return results

    def stats(self) -> dict[str, Any]:
        """Counters and breaker state, for metrics."""
        with self._stats_lock:
            stats = dict(self._stats)
        return {**stats, "breaker": self.breaker.snapshot()}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "T4Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        key_state = "set" if self._api_key() else "unset"
        return (
            f"T4Client(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r} ({key_state}), "
            f"timeout_s={self.timeout_s:g}, max_retries={self.max_retries}, breaker={self.breaker.state.value})"
        )

    # ---- internals ----------------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[name] += n

    def _api_key(self) -> str:
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    def _redact(self, message: str) -> str:
        key = self._api_key()
        return message.replace(key, "***") if key else message

    def _with_retries(self, prompt: str, max_tokens: int) -> tuple[str, list[float], tuple[int, int], int]:
        payload = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "logprobs": 1,
        }
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            self._count("attempts")
            try:
                return (*self._attempt(payload), attempt)
            except _AttemptFailed as failure:
                if not failure.retryable or attempt == attempts:
                    failure.message = f"T4 request failed after {attempt} attempt(s): {failure.message}"
                    raise
                delay = self._retry_delay(attempt, failure.retry_after)
                logger.warning(
                    "T4 attempt %d/%d failed (%s); retrying in %.2fs",
                    attempt, attempts, self._redact(failure.message), delay,
                )  # fmt: skip
                self._count("retries")
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_cap_s)
        backoff = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1))
        return backoff * random.uniform(0.5, 1.0)  # jitter: clients failing together retry apart

    def _attempt(self, payload: dict[str, Any]) -> tuple[str, list[float], tuple[int, int]]:
        key = self._api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = self._http.post(self.url, json=payload, headers=headers)
        except httpx.TimeoutException as err:
            message = f"timeout after {self.timeout_s:g}s ({type(err).__name__}) at {self.url}"
            raise _AttemptFailed(message, retryable=True) from None
        except httpx.ConnectError as err:
            raise _AttemptFailed(f"cannot connect to {self.url} ({err})", retryable=True) from None
        except httpx.TransportError as err:  # connection dropped mid-answer, protocol error, ...
            message = f"transport error {type(err).__name__} at {self.url} ({err})"
            raise _AttemptFailed(message, retryable=True) from None
        status = response.status_code
        if status != 200:
            snippet = response.text[:BODY_SNIPPET_CHARS].strip()
            message = f"HTTP {status} from {self.url}: {snippet}"
            if status in RETRYABLE_STATUS:
                retry_after = _retry_after_s(response.headers.get("Retry-After"))
                raise _AttemptFailed(message, retryable=True, retry_after=retry_after)
            raise _AttemptFailed(message, retryable=False, endpoint_fault=False)
        return _parse_completion(response)


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date); None if absent/invalid."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _field(obj: Any, *path: str | int) -> Any:
    """obj[path[0]][path[1]]...; a missing or mistyped step names the full path in the error."""
    for step in path:
        try:
            obj = obj[step]
        except (KeyError, IndexError, TypeError):
            where = "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path).lstrip(".")
            raise _AttemptFailed(f"malformed response: missing field {where}", retryable=False) from None
    return obj


def _is_logprob(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 1e-4  # NaN fails too


def _parse_completion(response: httpx.Response) -> tuple[str, list[float], tuple[int, int]]:
    try:
        body = response.json()
    except ValueError:
        snippet = response.text[:BODY_SNIPPET_CHARS].strip()
        raise _AttemptFailed(f"malformed response: HTTP 200 body is not JSON: {snippet!r}", retryable=False) from None
    text = _field(body, "choices", 0, "text")
    logprobs = _field(body, "choices", 0, "logprobs", "token_logprobs")
    prompt_tokens = _field(body, "usage", "prompt_tokens")
    completion_tokens = _field(body, "usage", "completion_tokens")
    if not isinstance(text, str):
        message = f"malformed response: choices[0].text is {type(text).__name__}, not a string"
        raise _AttemptFailed(message, retryable=False)
    if not isinstance(logprobs, list) or not all(_is_logprob(lp) for lp in logprobs):
        raise _AttemptFailed("malformed response: token_logprobs is not a list of numbers <= 0", retryable=False)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt_tokens, completion_tokens)):
        raise _AttemptFailed("malformed response: usage token counts are not non-negative integers", retryable=False)
    # Float32 log-softmax can land a hair above 0 for a certain token; clamp so p <= 1.
    return text, [min(0.0, float(lp)) for lp in logprobs], (prompt_tokens, completion_tokens)
