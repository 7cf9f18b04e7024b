"""Tier health as the gateway sees it: state, recent errors, traffic and the serving version.

Per tier (router, t1..t4) a CircuitBreaker (bls_router/circuit_breaker.py, with the BLS's T4
settings: failures in a row and cool-down) is fed by two sources:
  * probes every `probe_interval_s` (< one cool-down): Triton's model readiness for router /
    t1_<task> / t2 / t3, and GET <T4 base URL>/models for T4. A failed probe opens the breaker at
    once (it is a direct check, not a flaky request); while open, successes are not believed
    until the cool-down ends (the BLS would not call the tier before then either); after it the
    state reads half-open and the next success closes it.
  * every answer the gateway relays: each tier on METADATA's path succeeded unless METADATA's
    `errors` names it (a failure counts toward the breaker's streak, like a BLS call).
So an outage shows within one probe interval and recovery within one cool-down plus one probe.
Requests and fallbacks per tier in the last minute come from Triton's /metrics (every client's
traffic, not only the gateway's): routenlp_requests_total (answering tier) and
routenlp_fallbacks_total (failed tier), as counter increases over the window.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bls_router.circuit_breaker import BreakerState, CircuitBreaker

WINDOW_S = 60.0
STATE_NAMES = {BreakerState.CLOSED: "serving", BreakerState.OPEN: "open", BreakerState.HALF_OPEN: "half_open"}
STATE_VALUES = {"serving": 0, "half_open": 1, "open": 2}
_SECRET = re.compile(r"(sk-|rnlp-|Bearer\s+)[A-Za-z0-9_\-\.]{6,}", re.IGNORECASE)
MAX_ERROR_CHARS = 300


def redact(message: str) -> str:
    """Error text as shown on the health endpoint: bearer tokens and keys masked, bounded."""
    return _SECRET.sub(lambda m: m.group(1) + "***", message)[:MAX_ERROR_CHARS]


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


class TierHealth:
    def __init__(self, tier: str, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.tier = tier
        self.breaker = CircuitBreaker(failure_threshold=failures, reset_timeout_s=reset_s, clock=clock)
        self.clock, self.wall = clock, wall
        self.calls: deque[tuple[float, bool]] = deque()  # (monotonic time, ok) of probes and relayed calls
        self.last_error: dict[str, str] | None = None
        self.version: Any = None

    def record(self, ok: bool, error: str | None = None, *, probe: bool = False) -> None:
        now = self.clock()
        self.calls.append((now, ok))
        self._trim(now)
        if ok:
            if self.breaker.state is not BreakerState.OPEN:
                self.breaker.record_success()
            return
        self.last_error = {"at": _iso(self.wall()), "message": redact(error or "failed")}
        (self.breaker.trip if probe else self.breaker.record_failure)()

    def _trim(self, now: float) -> None:
        while self.calls and self.calls[0][0] < now - WINDOW_S:
            self.calls.popleft()

    def snapshot(self, traffic: Mapping[str, int]) -> dict[str, Any]:
        self._trim(self.clock())
        state = STATE_NAMES[self.breaker.state]
        failed = sum(1 for _, ok in self.calls if not ok)
        wait = self.breaker.seconds_until_trial()
        return {
            "state": state,
            "open_until": _iso(self.wall() + wait) if state == "open" else None,
            "error_rate": round(failed / len(self.calls), 4) if self.calls else 0.0,
            "checks_last_minute": len(self.calls),
            "last_error": self.last_error,
            "requests_last_minute": traffic.get("requests", 0),
            "fallbacks_last_minute": traffic.get("fallbacks", 0),
            "version": self.version,
        }


class TrafficWindow:
    """Per-tier increases of Triton's routenlp_requests_total / routenlp_fallbacks_total over the
    last minute, from periodic scrapes (series summed over task, version and instance)."""

    FAMILIES = {"routenlp_requests": "requests", "routenlp_fallbacks": "fallbacks"}

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.samples: deque[tuple[float, dict[tuple[str, str], float]]] = deque()

    @classmethod
    def totals(cls, exposition: str) -> dict[tuple[str, str], float]:
        totals: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(exposition):
            kind = cls.FAMILIES.get(family.name)
            if kind is None:
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels.get("tier", ""), kind)
                    totals[key] = totals.get(key, 0.0) + sample.value
        return totals

    def add(self, exposition: str) -> None:
        now = self.clock()
        self.samples.append((now, self.totals(exposition)))
        while len(self.samples) > 1 and self.samples[1][0] <= now - WINDOW_S:
            self.samples.popleft()

    def last_minute(self, tier: str) -> dict[str, int]:
        if len(self.samples) < 2:
            return {}
        first, last = self.samples[0][1], self.samples[-1][1]
        # a version unloading takes its series along: a drop is clamped, never negative traffic
        return {kind: int(max(0.0, last.get((tier, kind), 0.0) - first.get((tier, kind), 0.0))) for kind in self.FAMILIES.values()}


class HealthBoard:
    """Every tier's TierHealth plus the traffic window; what /health/tiers and the gauges show."""

    def __init__(self, tiers: Iterable[str], failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.tiers = {tier: TierHealth(tier, failures, reset_s, clock, wall) for tier in tiers}
        self.traffic = TrafficWindow(clock)
        self.reset_s = reset_s

    def observe_answer(self, metadata: Mapping[str, Any]) -> None:
        errors = metadata.get("errors") or {}
        for tier in metadata.get("path") or ():
            health = self.tiers.get(tier)
            if health is not None:
                health.record(tier not in errors, errors.get(tier))

    def snapshot(self) -> dict[str, Any]:
        return {
            "breaker": {"failures_to_open": next(iter(self.tiers.values())).breaker.failure_threshold, "cool_down_s": self.reset_s},
            "tiers": {tier: health.snapshot(self.traffic.last_minute(tier)) for tier, health in self.tiers.items()},
        }
