"""Tier health from probes and relayed METADATA, stepped with an injected clock."""

from __future__ import annotations

from gateway.health import HealthBoard, TrafficWindow, redact
from gateway.probes import probe_interval


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_probe_opens_at_once_and_recovery_needs_the_cool_down(tmp_path):
    clock = Clock()
    board = HealthBoard(["t3", "t4"], failures=5, reset_s=30, clock=clock, wall=clock)
    board.tiers["t4"].record(True, probe=True)
    assert board.snapshot()["tiers"]["t4"]["state"] == "serving"
    board.tiers["t4"].record(False, "GET /models failed: ConnectError", probe=True)
    t4 = board.snapshot()["tiers"]["t4"]
    assert t4["state"] == "open" and t4["open_until"] is not None and t4["error_rate"] == 0.5
    assert t4["last_error"]["message"] == "GET /models failed: ConnectError"
    clock.now += 10
    board.tiers["t4"].record(True, probe=True)  # up again, but within the cool-down: not believed yet
    assert board.snapshot()["tiers"]["t4"]["state"] == "open"
    clock.now += 21
    assert board.snapshot()["tiers"]["t4"]["state"] == "half_open"
    board.tiers["t4"].record(True, probe=True)
    assert board.snapshot()["tiers"]["t4"]["state"] == "serving"
    assert probe_interval(30) == 5.0 and probe_interval(4) < 4 / 2


def test_relayed_errors_count_toward_the_streak_and_successes_close_it():
    clock = Clock()
    board = HealthBoard(["t2", "t3", "t4"], failures=2, reset_s=4, clock=clock, wall=clock)
    down = {"path": ["t2", "t3", "t4"], "errors": {"t4": "T4 HTTP 500 (key sk-abcdefghijkl)"}}
    board.observe_answer(down)
    assert board.snapshot()["tiers"]["t4"]["state"] == "serving"  # one failure: not yet
    board.observe_answer(down)
    tiers = board.snapshot()["tiers"]
    assert tiers["t4"]["state"] == "open" and tiers["t2"]["state"] == "serving"
    assert "sk-***" in tiers["t4"]["last_error"]["message"] and "abcdefghijkl" not in tiers["t4"]["last_error"]["message"]
    clock.now += 61  # the error-rate window forgets
    assert board.snapshot()["tiers"]["t4"]["error_rate"] == 0.0


EXPOSITION = """# HELP routenlp_requests_total Requests
# TYPE routenlp_requests_total counter
routenlp_requests_total{{task="cs_intent",tier="t1",version="1",instance="a"}} {t1}
routenlp_requests_total{{task="cs_intent",tier="t1",version="1",instance="b"}} 1
# HELP routenlp_fallbacks_total Fallbacks
# TYPE routenlp_fallbacks_total counter
routenlp_fallbacks_total{{task="cs_intent",tier="t4",version="1",instance="a"}} {t4}
"""


def test_traffic_window_counts_increases_over_the_last_minute():
    clock = Clock()
    window = TrafficWindow(clock)
    window.add(EXPOSITION.format(t1=5, t4=2))
    clock.now += 30
    window.add(EXPOSITION.format(t1=12, t4=5))
    assert window.last_minute("t1") == {"requests": 7, "fallbacks": 0}
    assert window.last_minute("t4") == {"requests": 0, "fallbacks": 3}
    clock.now += 45
    window.add(EXPOSITION.format(t1=0, t4=5))  # version unloaded: series gone, never negative
    assert window.last_minute("t1")["requests"] == 0


def test_redact_masks_bearer_tokens_and_bounds_length():
    assert redact("Authorization: Bearer abcdefgh123") == "Authorization: Bearer ***"
    assert len(redact("x" * 1000)) == 300


def test_breaker_trip_opens_at_once_and_does_not_extend_a_running_cool_down():
    from bls_router.circuit_breaker import BreakerState, CircuitBreaker

    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=5, reset_timeout_s=10, clock=clock)
    breaker.trip()
    assert breaker.state is BreakerState.OPEN and breaker.seconds_until_trial() == 10
    clock.now += 6
    breaker.trip()  # still cooling down: the cool-down keeps its end
    assert breaker.seconds_until_trial() == 4
    clock.now += 4
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.trip()  # a failed check while half-open: open again, a fresh cool-down
    assert breaker.state is BreakerState.OPEN and breaker.seconds_until_trial() == 10
