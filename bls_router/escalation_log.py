"""The durable escalation log: one row per routed request, in SQLite (WAL mode).

Written by the `routenlp` BLS before it answers (so every request that got a success response has
its row, even if tritonserver is killed right after; one writer thread per BLS instance commits
the rows queued meanwhile together, EscalationLog), read by `routenlp log tail`, the escalation
monitor's reports and coopt's failure collection. WAL lets readers run while the server writes;
synchronous=NORMAL in WAL mode keeps committed rows across a process crash (what a SIGKILL is).
Several model instances (processes) may append at once: SQLite serialises the writers. A caller
that answers a batch itself (the BLS's execute()) commits the batch's rows in one transaction on
its own thread instead (EscalationLog.write): no handoff to the writer thread and back.

Raw request text and answers are kept only when `keep_text` is set (ROUTENLP_LOG_TEXT=1): the
default row holds a hash and the byte size of the text, never the text.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from routenlp_core.paths import DEFAULT_ESCALATION_LOG

ENV_LOG_PATH = "ROUTENLP_ESCALATION_LOG"
ENV_LOG_TEXT = "ROUTENLP_LOG_TEXT"
DEFAULT_LOG_PATH = DEFAULT_ESCALATION_LOG
RAW_TEXT_FIELDS = ("text", "output")
BUSY_TIMEOUT_MS = 5000

# Columns queried by tail/coopt; the whole record is kept as JSON beside them.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS escalations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    task TEXT NOT NULL,
    tier TEXT NOT NULL,
    path TEXT NOT NULL,
    escalations INTEGER NOT NULL,
    fallback TEXT,
    cost_usd REAL NOT NULL,
    total_ms REAL NOT NULL,
    repository_version INTEGER,
    bls_version TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS escalations_request ON escalations (request_id);
CREATE INDEX IF NOT EXISTS escalations_task ON escalations (task, seq);
"""


def log_path(environ: Mapping[str, str] = os.environ, default: Path = DEFAULT_LOG_PATH) -> Path:
    """ROUTENLP_ESCALATION_LOG, else `default` (`routenlp serve` sets the variable to var/)."""
    return Path(environ.get(ENV_LOG_PATH, "").strip() or default)


def keep_text_from_env(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(ENV_LOG_TEXT, "").strip().lower() in ("1", "true", "yes")


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None)
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return connection


def _enable_wal(connection: sqlite3.Connection) -> None:
    """Switching to WAL takes an exclusive lock without waiting on busy_timeout: the BLS's two
    instances open the same log at once, and the second failed "database is locked" (seen in CI).
    So the switch is retried within the same busy budget."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def open_wal_database(path: Path) -> sqlite3.Connection:
    """A connection to the SQLite file at `path` in WAL mode with synchronous=NORMAL (committed
    transactions survive a process crash), shared by threads and tolerant of other writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = _connect(path)
    _enable_wal(connection)
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


class Commit:
    """Set once the record it stands for is committed (or its transaction failed)."""

    __slots__ = ("_done", "error")

    def __init__(self) -> None:
        self._done = threading.Event()
        self.error: BaseException | None = None

    def finish(self, error: BaseException | None) -> None:
        self.error = error
        self._done.set()

    def done(self, timeout_s: float | None = None) -> bool:
        """Whether the commit (or its failure) happened, waiting up to timeout_s for it."""
        return self._done.wait(timeout_s)

    def wait(self, timeout_s: float | None = None) -> None:
        """Returns once the record is committed; raises the commit's error, or TimeoutError."""
        if not self._done.wait(timeout_s):
            raise TimeoutError(f"escalation log: no commit within {timeout_s:g} s")
        if self.error is not None:
            raise self.error


_STOP = object()
GROUP_MAX_ROWS = 256  # rows per transaction at most (a burst is committed in a few)
_INSERT = (
    "INSERT INTO escalations (ts, request_id, task, tier, path, escalations, fallback, cost_usd, total_ms, "
    "repository_version, bls_version, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class EscalationLog:
    """Append-only store of routing records (RouteResult.record dicts), written by one background
    thread with group commit: whatever rows are queued when it is free go in one transaction.

    Durability promise (unchanged by the group commit): submit() returns a Commit whose wait()
    returns only once the row's transaction is committed to the WAL, and the BLS sends a request's
    answer only after that wait, so every answered request's row survives a process crash (SIGKILL).
    What the group commit saves is the commit per row under concurrency and, for each request, the
    time the row is written while its response is being built."""

    def __init__(self, path: Path | str, *, keep_text: bool = False, direct_busy_s: float = 0.2) -> None:
        self.path = Path(path)
        self.keep_text = keep_text
        self._db = open_wal_database(self.path)
        self._db.executescript(_SCHEMA)
        # write()'s own connection: it waits at most direct_busy_s for another writer's lock
        self._direct = open_wal_database(self.path)
        self._direct.execute(f"PRAGMA busy_timeout={int(direct_busy_s * 1000)}")
        self._direct_lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="escalation-log", daemon=True)
        self._writer.start()

    def _row(self, record: Mapping[str, Any]) -> tuple:
        row = {k: v for k, v in record.items() if self.keep_text or k not in RAW_TEXT_FIELDS}
        return (
            float(row["ts"]), str(row["request_id"]), str(row["task"]), str(row["tier"]), json.dumps(list(row["path"])),
            int(row.get("escalations") or 0), row.get("fallback"), float(row.get("cost_usd") or 0.0), float(row.get("total_ms") or 0.0),
            row.get("repository_version"), None if row.get("bls_version") is None else str(row["bls_version"]),
            json.dumps(row, sort_keys=True, default=str),
        )

    def submit(self, record: Mapping[str, Any]) -> Commit:
        """Queues the record for the writer; wait() on the result before answering its request.
        A record that cannot be turned into a row raises here, in the caller."""
        commit = Commit()
        if not self._writer.is_alive():
            raise RuntimeError("escalation log is closed")
        self._queue.put((self._row(record), commit))
        return commit

    def append(self, record: Mapping[str, Any]) -> None:
        """submit() and wait for the commit."""
        self.submit(record).wait()

    def write(self, records: Sequence[Mapping[str, Any]]) -> bool:
        """Commits the records in one transaction on the calling thread, with the same promise as
        submit() + wait(): True once they are committed. False when another writer held the
        database past direct_busy_s (nothing written: submit() them instead). Other errors raise."""
        rows = [self._row(record) for record in records]
        with self._direct_lock:
            try:
                self._direct.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as err:
                if "locked" in str(err) or "busy" in str(err):
                    return False
                raise
            try:
                self._direct.executemany(_INSERT, rows)
                self._direct.execute("COMMIT")
            except BaseException:
                self._direct.execute("ROLLBACK")
                raise
        return True

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < GROUP_MAX_ROWS:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [item for item in batch if item is not _STOP]
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[tuple[tuple, Commit]]) -> None:
        error = None
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_INSERT, [row for row, _ in batch])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except Exception as err:  # every record of the transaction reports it to its request
            error = err
        for _, commit in batch:
            commit.finish(error)

    def close(self) -> None:
        """Commits what is queued, then closes."""
        if self._writer.is_alive():
            self._queue.put(_STOP)
            self._writer.join()
        self._db.close()
        with self._direct_lock:
            self._direct.close()

    def __enter__(self) -> "EscalationLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EscalationLogReader:
    """Read-only queries; works while a server appends (WAL readers never block the writer)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no escalation log at {self.path} (set {ENV_LOG_PATH} or --db to the server's log)")
        self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)

    def tail(self, n: int = 20, *, task: str | None = None) -> list[dict[str, Any]]:
        """The latest `n` records, oldest first."""
        where, params = ("WHERE task = ?", (task,)) if task else ("", ())
        rows = self._db.execute(f"SELECT seq, record FROM escalations {where} ORDER BY seq DESC LIMIT ?", (*params, int(n))).fetchall()
        return [{"seq": seq, **json.loads(record)} for seq, record in reversed(rows)]

    def records(self, *, since_seq: int = 0) -> Iterator[dict[str, Any]]:
        for seq, record in self._db.execute("SELECT seq, record FROM escalations WHERE seq > ? ORDER BY seq", (since_seq,)):
            yield {"seq": seq, **json.loads(record)}

    def request_ids(self) -> set[str]:
        return {rid for (rid,) in self._db.execute("SELECT request_id FROM escalations")}

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM escalations").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "EscalationLogReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
