"""Per-stage spans of a routed request: what RoutingService records, and the breakdown arithmetic."""

from __future__ import annotations

import threading

from routenlp_core.stage_times import StageTimes, StageTotals, activate, breakdown, current, span


def test_spans_go_to_the_active_request_only():
    times = StageTimes()
    with times.active():
        with span("tokenize"):
            pass
        with span("tokenize"):
            pass
    with span("router"):  # no request active: discarded
        pass
    assert set(times.ns) == {"tokenize"} and times.ns["tokenize"] > 0
    assert current().ns == {}


def test_activate_holds_across_calls_and_threads_keep_their_own():
    mine, seen = StageTimes(), {}
    activate(mine)
    try:
        worker = threading.Thread(target=lambda: seen.setdefault("other", current()))
        worker.start()
        worker.join()
        assert current() is mine and seen["other"] is not mine
    finally:
        activate(None)


def test_totals_and_breakdown_give_microseconds_per_request():
    totals = StageTotals()
    for ns in (1_000_000, 3_000_000):
        times = StageTimes()
        times.add("router", ns)
        totals.add(times)
    requests, ns = totals.snapshot()
    seconds = {stage: value / 1e9 for stage, value in ns.items()}
    assert requests == 2
    result = breakdown((0, {}), (requests, seconds))
    assert result["router"] == 2000.0 and result["log"] == 0.0
    assert breakdown((2, seconds), (2, seconds)) == {}


def test_routing_service_records_its_stages():
    from tests.unit.test_service import FakeTiers, service  # the service over plain-Python tiers

    routing = service(FakeTiers())
    times = StageTimes()
    with times.active():
        routing.handle("We may change these terms at any time.", "legal_risk")
    assert {"cascade", "metadata", "log"} <= set(times.ns)
