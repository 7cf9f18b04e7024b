"""The durable escalation log (SQLite WAL) and the escalation-rate monitor, without Triton."""

import multiprocessing
import sqlite3

import pytest

from bls_router.escalation_log import EscalationLog, EscalationLogReader, keep_text_from_env, log_path
from bls_router.escalation_monitor import EscalationMonitor


def _record(i: int, task: str = "fin_ner", **extra) -> dict:
    return {
        "ts": 1000.0 + i, "request_id": f"r{i}", "task": task, "policy": "routenlp", "tier": "t2", "path": ["t1", "t2"],
        "u": {"t1": 0.4, "t2": 0.1}, "escalations": 1, "fallback": None, "cost_usd": 0.001 * i, "total_ms": 12.5,
        "repository_version": 3, "bls_version": "4", "text": "Acme Corp raised $5M", "output": '{"entities": []}', **extra,
    }  # fmt: skip


def test_records_survive_reopening_and_tail_returns_the_latest_oldest_first(tmp_path):
    path = tmp_path / "state" / "log.sqlite"
    with EscalationLog(path) as log:
        for i in range(30):
            log.append(_record(i, task="fin_ner" if i % 3 else "legal_risk"))
    with EscalationLogReader(path) as reader:  # a new connection: what a restarted server sees
        assert reader.count() == 30
        tail = reader.tail(5)
        assert [r["request_id"] for r in tail] == ["r25", "r26", "r27", "r28", "r29"]
        assert tail[-1]["path"] == ["t1", "t2"] and tail[-1]["u"] == {"t1": 0.4, "t2": 0.1}
        assert [r["request_id"] for r in reader.tail(2, task="legal_risk")] == ["r24", "r27"]
        assert reader.request_ids() == {f"r{i}" for i in range(30)}
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_raw_text_is_not_stored_unless_configured(tmp_path):
    with EscalationLog(tmp_path / "plain.sqlite") as log:
        log.append(_record(1))
    with EscalationLog(tmp_path / "text.sqlite", keep_text=True) as log:
        log.append(_record(1))
    plain = b"".join(p.read_bytes() for p in tmp_path.glob("plain.sqlite*"))
    assert b"Acme Corp" not in plain
    with EscalationLogReader(tmp_path / "plain.sqlite") as reader:
        assert "text" not in reader.tail(1)[0] and "output" not in reader.tail(1)[0]
    with EscalationLogReader(tmp_path / "text.sqlite") as reader:
        assert reader.tail(1)[0]["text"] == "Acme Corp raised $5M"


def test_environment_names_the_path_and_the_text_switch(tmp_path):
    assert log_path({"ROUTENLP_ESCALATION_LOG": str(tmp_path / "x.sqlite")}) == tmp_path / "x.sqlite"
    assert log_path({}).name == "escalation_log.sqlite"
    assert keep_text_from_env({"ROUTENLP_LOG_TEXT": "1"}) and not keep_text_from_env({"ROUTENLP_LOG_TEXT": "0"}) and not keep_text_from_env({})


def _append_many(path, start):
    with EscalationLog(path) as log:
        for i in range(start, start + 50):
            log.append(_record(i))


def test_two_processes_append_concurrently_without_losing_rows(tmp_path):
    # Two model instances are two stub processes writing one log.
    path = tmp_path / "log.sqlite"
    EscalationLog(path).close()
    workers = [multiprocessing.get_context("spawn").Process(target=_append_many, args=(path, s)) for s in (0, 1000)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    with EscalationLogReader(path) as reader:
        assert reader.count() == 100


def test_reader_names_a_missing_log():
    with pytest.raises(FileNotFoundError, match="no escalation log"):
        EscalationLogReader("/nonexistent/log.sqlite")


def test_monitor_alerts_on_a_ten_percent_relative_rise_and_clears():
    monitor = EscalationMonitor({"fin_ner": 0.20}, window=100, min_requests=50)
    assert monitor.limit("fin_ner") == pytest.approx(0.22)
    changes = [monitor.observe("fin_ner", i % 5 == 0) for i in range(100)]  # 20%: at baseline
    assert not any(changes) and monitor.rate("fin_ner") == pytest.approx(0.2)
    changes = [monitor.observe("fin_ner", i % 4 == 0) for i in range(100)]  # 25% > 22%
    raised = [c for c in changes if c]
    assert len(raised) == 1 and raised[0].raised and "fin_ner" in raised[0].message()
    assert monitor.alerting("fin_ner") and monitor.state()["fin_ner"]["alert"] is True
    changes = [monitor.observe("fin_ner", i % 4 == 0) for i in range(100)]  # still above: no flapping
    assert not any(changes)
    changes = [monitor.observe("fin_ner", False) for _ in range(100)]
    cleared = [c for c in changes if c]
    assert len(cleared) == 1 and not cleared[0].raised and not monitor.alerting("fin_ner")


def test_monitor_waits_for_enough_requests_and_ignores_uncalibrated_tasks():
    monitor = EscalationMonitor({"fin_ner": 0.1}, window=100, min_requests=50)
    assert all(monitor.observe("fin_ner", True) is None for _ in range(49))  # every one escalated, still < min
    assert monitor.observe("fin_ner", True).raised
    assert all(monitor.observe("cs_response", True) is None for _ in range(200))  # no baseline: no alert
    with pytest.raises(ValueError):
        EscalationMonitor({}, window=10, min_requests=20)


def test_group_commit_writes_every_concurrent_record_and_reports_failures_to_each(tmp_path):
    import threading

    path = tmp_path / "log.sqlite"
    with EscalationLog(path) as log:
        commits, lock = [], threading.Lock()

        def submit(start):
            for i in range(start, start + 100):
                commit = log.submit(_record(i))
                with lock:
                    commits.append(commit)

        threads = [threading.Thread(target=submit, args=(k * 1000,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for commit in commits:
            commit.wait(10)  # returns: committed
        with EscalationLogReader(path) as reader:  # committed means readable by another connection
            assert reader.count() == 400
        sqlite3.connect(path).execute("DROP TABLE escalations").connection.commit()
        failed = [log.submit(_record(i)) for i in range(3)]
        for commit in failed:
            with pytest.raises(sqlite3.OperationalError, match="no such table"):
                commit.wait(10)
        with pytest.raises(KeyError):  # a record that cannot become a row fails its caller at once
            log.submit({"ts": 1.0})
    with pytest.raises(RuntimeError, match="closed"):
        log.submit(_record(1))


def test_write_commits_a_batch_on_the_callers_thread_and_gives_way_to_a_busy_log(tmp_path):
    import time

    path = tmp_path / "log.sqlite"
    with EscalationLog(path, direct_busy_s=0.1) as log:
        assert log.write([_record(i) for i in range(3)]) is True
        with EscalationLogReader(path) as reader:  # committed: readable by another connection
            assert reader.request_ids() == {"r0", "r1", "r2"}
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another instance's writer holds the log
        started = time.monotonic()
        assert log.write([_record(3)]) is False
        assert time.monotonic() - started < 2.0  # gave way after about direct_busy_s, not BUSY_TIMEOUT_MS
        other.execute("COMMIT")
        other.close()
        log.submit(_record(3)).wait(10)  # what the BLS then does with it
        with pytest.raises(KeyError):  # a record that cannot become a row fails its caller, nothing written
            log.write([_record(4), {"ts": 1.0}])
        with EscalationLogReader(path) as reader:
            assert reader.request_ids() == {"r0", "r1", "r2", "r3"}


_KILL_SCRIPT = """
import sys
from bls_router.escalation_log import EscalationLog
log = EscalationLog(sys.argv[1])
i = 0
while True:
    # a batch written on this thread (the BLS's execute()), then one through the writer thread
    log.write([{"ts": 1.0, "request_id": f"r{i + k}", "task": "t", "tier": "t1", "path": ["t1"]} for k in (0, 1)])
    log.submit({"ts": 1.0, "request_id": f"r{i + 2}", "task": "t", "tier": "t1", "path": ["t1"]}).wait()
    for k in range(3):
        print(f"r{i + k}", flush=True)  # "answered": only after the commit
    i += 3
"""


def test_every_row_waited_for_survives_a_sigkill(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "log.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True)
    answered = []
    deadline = time.monotonic() + 60
    while len(answered) < 300 and time.monotonic() < deadline:
        answered.append(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    answered += proc.stdout.read().split()
    proc.wait(10)
    with EscalationLogReader(path) as reader:
        assert len(answered) >= 300 and set(answered) <= reader.request_ids()
