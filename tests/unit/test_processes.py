"""routenlp.processes: lowering a started session's priority (the local T4 endpoint's)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from routenlp.processes import deprioritize_session, stop_process_group


def test_a_session_and_the_children_it_starts_later_run_at_the_lower_priority():
    # the leader starts its child only after being deprioritized, as vLLM starts its engine core
    script = "import subprocess, sys, time; time.sleep(0.5); child = subprocess.Popen(['sleep', '30']); print(child.pid, flush=True); time.sleep(30)"
    proc = subprocess.Popen(["python3", "-c", script], start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        assert deprioritize_session(proc.pid, 7) == []
        child = int(proc.stdout.readline())
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == 7
        assert os.getpriority(os.PRIO_PROCESS, child) == 7
        autogroup = Path(f"/proc/{proc.pid}/autogroup")
        if autogroup.exists():  # the group's own nice, what ranks it against other sessions
            assert autogroup.read_text().split()[-1] == "7"
            assert Path(f"/proc/{child}/autogroup").read_text() == autogroup.read_text()
        assert os.getpriority(os.PRIO_PROCESS, os.getpid()) != 7  # the caller keeps its own
    finally:
        stop_process_group(proc, 1.0, term_group=True)


def test_a_gone_process_is_reported_not_raised():
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    problems = deprioritize_session(proc.pid, 5)
    assert problems and any(str(proc.pid) in p for p in problems)
