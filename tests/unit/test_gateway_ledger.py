"""The budget ledger at its edges, on a real SQLite file: exactly at the cap, racing requests
(overspend below one request's maximum cost), day and month rollover, a SIGKILLed gateway."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from gateway.ledger import BudgetLedger, periods

DAY = {"day": 1.0}


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def spend(ledger: BudgetLedger, caps, cost: float, max_cost: float | None = None) -> bool:
    admission = ledger.reserve("acme", caps, cost if max_cost is None else max_cost)
    if admission.admitted:
        ledger.settle(admission.reservation, cost, "r")
    return admission.admitted


def test_a_request_exactly_at_the_cap_is_refused_and_one_below_is_admitted(tmp_path):
    with BudgetLedger(tmp_path / "ledger.sqlite") as ledger:
        assert spend(ledger, DAY, 0.5) and spend(ledger, DAY, 0.499999999)
        assert ledger.spent_usd("acme") == pytest.approx(0.999999999, abs=1e-12)
        assert spend(ledger, DAY, 0.000000001)  # one nano-dollar below the cap: admitted
        assert ledger.spent_usd("acme") == 1.0  # exactly at the cap (integer nano-dollars)
        refused = ledger.reserve("acme", DAY, 0.01)
        assert not refused.admitted
        assert refused.budget.remaining_usd == 0.0 and refused.budget.period == "day" and refused.budget.cap_usd == 1.0
        headers = refused.budget.headers()
        assert headers["x-routenlp-budget-remaining-usd"] == "0.000000" and headers["x-routenlp-budget-reset"].endswith("+00:00")
        assert ledger.reserve("other-tenant", DAY, 0.01).admitted  # caps are per tenant


def test_holds_of_requests_in_flight_count_and_a_release_frees_them(tmp_path):
    with BudgetLedger(tmp_path / "ledger.sqlite") as ledger:
        first = ledger.reserve("acme", DAY, 0.6)
        second = ledger.reserve("acme", DAY, 0.6)  # 0.6 held < 1.0: admitted, may overspend by < 0.6
        assert first.admitted and second.admitted
        assert not ledger.reserve("acme", DAY, 0.01).admitted  # 1.2 held >= cap
        ledger.release(second.reservation)  # e.g. the BLS refused the text: no cost
        after = ledger.settle(first.reservation, 0.25, "r1", DAY)  # the real cost is charged, not the hold
        assert ledger.spent_usd("acme") == 0.25 and after.remaining_usd == pytest.approx(0.75)
        assert ledger.standing("acme", DAY).remaining_usd == pytest.approx(0.75)


def _race(path, caps, max_cost, actual, admitted, barrier):
    ledger = BudgetLedger(path)  # its own connection, as another gateway process would have
    barrier.wait()
    while True:
        admission = ledger.reserve("acme", caps, max_cost)
        if not admission.admitted:
            break
        time.sleep(0.002)  # the upstream call: others race meanwhile
        ledger.settle(admission.reservation, actual, "r")
        admitted.append(1)
    ledger.close()


@pytest.mark.parametrize("actual", [0.3, 0.17], ids=["every-request-costs-its-maximum", "cheaper-than-reserved"])
def test_racing_requests_overspend_less_than_one_requests_maximum_cost(tmp_path, actual):
    """16 writers race the last dollars. Bound: final spend < cap + max_cost (0.3 here)."""
    path, max_cost, cap = tmp_path / "ledger.sqlite", 0.3, 1.0
    BudgetLedger(path).close()
    admitted: list[int] = []
    barrier = threading.Barrier(16)
    threads = [threading.Thread(target=_race, args=(path, DAY, max_cost, actual, admitted, barrier)) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with BudgetLedger(path) as ledger:
        spent = ledger.spent_usd("acme")
    assert spent == pytest.approx(len(admitted) * actual)
    assert cap - max_cost < spent < cap + max_cost, (spent, len(admitted))
    print(f"\n[ledger] 16 racing writers, cap ${cap}, max cost ${max_cost}, actual ${actual}: {len(admitted)} admitted, spent ${spent:.2f}")


def test_day_rollover_resets_the_daily_cap_and_the_month_cap_carries_over(tmp_path):
    clock = Clock(at("2026-12-06T23:59:59"))
    caps = {"day": 1.0, "month": 1.5}
    with BudgetLedger(tmp_path / "ledger.sqlite", clock=clock) as ledger:
        assert spend(ledger, caps, 0.7)
        late = ledger.reserve("acme", caps, 0.3)  # admitted before midnight, answered after it
        clock.now = at("2026-12-07T00:00:01")
        ledger.settle(late.reservation, 0.3, "late")
        assert ledger.spent_usd("acme", "day") == 0.0  # charged to the day it was admitted in
        clock.now = at("2026-12-06T12:00:00")
        assert ledger.spent_usd("acme", "day") == pytest.approx(1.0)
        clock.now = at("2026-12-07T00:00:01")
        assert spend(ledger, caps, 0.5)  # a new day: the daily cap is fresh, the month has 0.5 left
        refused = ledger.reserve("acme", caps, 0.01)
        assert not refused.admitted and refused.budget.period == "month" and refused.budget.cap_usd == 1.5
        assert dt.datetime.fromtimestamp(refused.budget.resets_at, dt.timezone.utc).isoformat() == "2027-01-01T00:00:00+00:00"
        clock.now = at("2027-01-01T00:00:00")
        assert periods(clock.now) == {"day": "day:2027-01-01", "month": "month:2027-01"}
        assert spend(ledger, caps, 0.9)  # new month, new day


CHILD = """
import sys, time
from gateway.ledger import BudgetLedger
ledger = BudgetLedger(sys.argv[1])
caps = {"day": 1.0}
first = ledger.reserve("acme", caps, 0.4)
ledger.settle(first.reservation, 0.4, "settled")
ledger.reserve("acme", caps, 0.3)  # in flight when the gateway dies
print("holding", flush=True)
time.sleep(60)
"""


def test_a_sigkilled_gateway_keeps_committed_spend_and_its_hold_expires(tmp_path):
    path = tmp_path / "ledger.sqlite"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    clock = Clock(time.time())
    with BudgetLedger(path, clock=clock, reservation_ttl_s=600) as ledger:
        assert ledger.spent_usd("acme") == pytest.approx(0.4)
        assert ledger.standing("acme", DAY).remaining_usd == pytest.approx(0.3)  # the dead request's hold still counts
        clock.now += 601  # past the hold's lifetime (longer than any upstream call)
        assert ledger.standing("acme", DAY).remaining_usd == pytest.approx(0.6)
        assert spend(ledger, DAY, 0.6) and not ledger.reserve("acme", DAY, 0.01).admitted
