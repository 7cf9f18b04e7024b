"""The budget ledger: each tenant's spend per UTC day and month, durable in SQLite (WAL).

A request is admitted by reserving its maximum cost (gateway.pricing) and settled with its real
cost from METADATA. Admission checks, in one write transaction (BEGIN IMMEDIATE, so racing
gateways and threads are serialised by SQLite):

    spent + reserved by requests in flight  <  cap      (for the day, and the month if capped)

so a request arriving when the tenant sits exactly at its cap is refused, and the overspend is
bounded: every admitted request saw the sum below the cap and added at most its own maximum cost,
so the final spend of the period stays below cap + the largest single reservation (one request's
maximum cost), provided no request costs more than what it reserved (pricing.max_cost's job).

Amounts are integer nano-dollars (METADATA rounds costs to 1e-8 $), so "exactly at the cap" is
exact. A request is charged to the day and month it was admitted in. Reservations of a gateway
that died mid-request expire after `reservation_ttl_s` (longer than any upstream call may take);
until then they hold their share of the budget. Committed spend survives restarts and crashes
(WAL with synchronous=NORMAL keeps committed transactions across a process crash).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bls_router.escalation_log import open_wal_database

NANO = 1_000_000_000
DEFAULT_RESERVATION_TTL_S = 600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    tenant TEXT NOT NULL,
    period TEXT NOT NULL,          -- 'day:2026-12-06' or 'month:2026-12' (UTC)
    spent_nusd INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    PRIMARY KEY (tenant, period)
);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    day TEXT NOT NULL,
    month TEXT NOT NULL,
    amount_nusd INTEGER NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_tenant ON reservations (tenant);
CREATE TABLE IF NOT EXISTS charges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    tenant TEXT NOT NULL,
    day TEXT NOT NULL,
    request_id TEXT NOT NULL,
    cost_nusd INTEGER NOT NULL
);
"""


def to_nano(dollars: float) -> int:
    return int(round(float(dollars) * NANO))


def periods(ts: float) -> dict[str, str]:
    """The UTC day and month a wall-clock time falls in, as ledger period keys."""
    day = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    return {"day": f"day:{day:%Y-%m-%d}", "month": f"month:{day:%Y-%m}"}


def period_end(kind: str, ts: float) -> float:
    """When the current day / month (UTC) ends: the budget's reset time."""
    now = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "day":
        return (start + dt.timedelta(days=1)).timestamp()
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return start.replace(year=year, month=month, day=1).timestamp()


@dataclass(frozen=True)
class Budget:
    """A tenant's standing in its tightest period: what is left of which cap, and when it resets."""

    period: str  # "day" or "month"
    cap_usd: float
    remaining_usd: float  # cap - spent - reserved by requests in flight (never below 0)
    resets_at: float  # unix time

    def headers(self) -> dict[str, str]:
        return {
            "x-routenlp-budget-period": self.period,
            "x-routenlp-budget-limit-usd": f"{self.cap_usd:.6f}",
            "x-routenlp-budget-remaining-usd": f"{self.remaining_usd:.6f}",
            "x-routenlp-budget-reset": dt.datetime.fromtimestamp(self.resets_at, dt.timezone.utc).isoformat(timespec="seconds"),
        }


@dataclass(frozen=True)
class Reservation:
    id: str
    tenant: str
    day: str
    month: str
    amount_nusd: int


@dataclass(frozen=True)
class Admission:
    reservation: Reservation | None  # None: refused
    budget: Budget  # the tightest period at admission (the refusing one when refused)

    @property
    def admitted(self) -> bool:
        return self.reservation is not None


class BudgetLedger:
    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time, reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S) -> None:
        self.path = Path(path)
        self.clock = clock
        self.reservation_ttl_s = reservation_ttl_s
        self._lock = threading.Lock()  # one connection, shared by the threads of one process
        self._db = open_wal_database(self.path)
        self._db.executescript(_SCHEMA)

    def _standing(self, tenant: str, caps: Mapping[str, float], keys: Mapping[str, str], now: float) -> list[tuple[int, str, int]]:
        """(left in nano-dollars, period kind, cap) per capped period, tightest first."""
        rows = []
        for kind, cap in caps.items():
            (spent,) = self._db.execute("SELECT COALESCE(SUM(spent_nusd), 0) FROM spend WHERE tenant = ? AND period = ?", (tenant, keys[kind])).fetchone()
            (held,) = self._db.execute(
                f"SELECT COALESCE(SUM(amount_nusd), 0) FROM reservations WHERE tenant = ? AND {kind} = ? AND expires > ?", (tenant, keys[kind], now)
            ).fetchone()
            rows.append((to_nano(cap) - spent - held, kind, to_nano(cap)))
        return sorted(rows)

    @staticmethod
    def _budget(standing: list[tuple[int, str, int]], now: float) -> Budget:
        left, kind, cap = standing[0]
        return Budget(kind, cap / NANO, max(0, left) / NANO, period_end(kind, now))

    def reserve(self, tenant: str, caps: Mapping[str, float], max_cost_usd: float) -> Admission:
        """Admit a request of at most `max_cost_usd` if every capped period has budget left."""
        now = self.clock()
        keys = periods(now)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM reservations WHERE expires <= ?", (now,))
                standing = self._standing(tenant, caps, keys, now)
                if standing and standing[0][0] <= 0:
                    self._db.execute("COMMIT")
                    return Admission(None, self._budget(standing, now))
                reservation = Reservation(uuid.uuid4().hex, tenant, keys["day"], keys["month"], max(0, to_nano(max_cost_usd)))
                self._db.execute(
                    "INSERT INTO reservations (id, tenant, day, month, amount_nusd, expires) VALUES (?, ?, ?, ?, ?, ?)",
                    (reservation.id, tenant, reservation.day, reservation.month, reservation.amount_nusd, now + self.reservation_ttl_s),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        budget = self._budget(standing, now) if standing else Budget("day", float("inf"), float("inf"), period_end("day", now))
        return Admission(reservation, budget)

    def settle(self, reservation: Reservation, cost_usd: float, request_id: str, caps: Mapping[str, float] | None = None) -> Budget | None:
        """Charge the request's real cost to the periods it was admitted in; its hold is freed.
        With `caps`, returns the tenant's standing after the charge (same transaction)."""
        cost = max(0, to_nano(cost_usd))
        now = self.clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,))
                for period in (reservation.day, reservation.month):
                    self._db.execute(
                        "INSERT INTO spend (tenant, period, spent_nusd, requests) VALUES (?, ?, ?, 1) "
                        "ON CONFLICT (tenant, period) DO UPDATE SET spent_nusd = spent_nusd + excluded.spent_nusd, requests = requests + 1",
                        (reservation.tenant, period, cost),
                    )
                self._db.execute(
                    "INSERT INTO charges (ts, tenant, day, request_id, cost_nusd) VALUES (?, ?, ?, ?, ?)",
                    (now, reservation.tenant, reservation.day, request_id, cost),
                )
                standing = self._standing(reservation.tenant, caps, periods(now), now) if caps else None
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self._budget(standing, now) if standing else None

    def release(self, reservation: Reservation) -> None:
        """Free a hold without a charge: the request failed before any tier ran (no cost)."""
        with self._lock:
            self._db.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,))

    def standing(self, tenant: str, caps: Mapping[str, float]) -> Budget:
        now = self.clock()
        with self._lock:
            return self._budget(self._standing(tenant, caps, periods(now), now), now)

    def spent_usd(self, tenant: str, kind: str = "day") -> float:
        """Committed spend of the current day / month."""
        key = periods(self.clock())[kind]
        with self._lock:
            (spent,) = self._db.execute("SELECT COALESCE(SUM(spent_nusd), 0) FROM spend WHERE tenant = ? AND period = ?", (tenant, key)).fetchone()
        return spent / NANO

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "BudgetLedger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

