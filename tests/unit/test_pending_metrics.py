"""Metric updates buffered by the routing threads and drained by the BLS's publisher thread."""

from __future__ import annotations

import threading

from bls_router.pending_metrics import PendingMetrics


def test_counters_add_up_observations_keep_every_value_gauges_keep_the_last():
    pending = PendingMetrics()
    assert not pending.drain()
    pending.add_many({"requests": [("legal_risk", "t1", 1.0)], "dollars": [("legal_risk", "t1", 0.25), ("legal_risk", "t2", 1.0)]})
    pending.add_many({"requests": [("legal_risk", "t1", 1.0)], "dollars": [("legal_risk", "t1", 0.5)]})
    pending.add("failures", "internal", 1.0)
    pending.observe("latency", "legal_risk", 3.0)
    pending.observe("latency", "legal_risk", 5.0)
    pending.set("escalation_rate", "legal_risk", 0.2)
    pending.set("escalation_rate", "legal_risk", 0.1)
    updates = pending.drain()
    assert updates.counters == {
        ("requests", ("legal_risk", "t1")): 2.0,
        ("dollars", ("legal_risk", "t1")): 0.75,
        ("dollars", ("legal_risk", "t2")): 1.0,
        ("failures", "internal"): 1.0,
    }
    assert updates.observations == {("latency", "legal_risk"): [3.0, 5.0]}
    assert updates.gauges == {("escalation_rate", "legal_risk"): 0.1}
    assert not pending.drain()  # drained: the next second starts from nothing


def test_no_update_is_lost_between_threads_and_drains():
    pending = PendingMetrics()
    drained = []

    def record():
        for _ in range(2000):
            pending.add_many({"requests": [("cs_intent", "t1", 1.0)]})

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        drained.append(pending.drain())
    for thread in threads:
        thread.join()
    drained.append(pending.drain())
    assert sum(u.counters.get(("requests", ("cs_intent", "t1")), 0.0) for u in drained) == 8000.0
