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


def test_stopping_a_group_removes_the_shared_memory_it_left_and_nothing_else(tmp_path):
    from routenlp.processes import SHM_DIR

    # a group whose child maps a /dev/shm file and never cleans up (as a SIGKILLed vLLM worker)
    name = f"psm_routenlp_test_{os.getpid()}"
    other = SHM_DIR / f"psm_routenlp_other_{os.getpid()}"
    other.write_bytes(b"x")  # someone else's, unmapped: must stay
    script = (
        "import mmap, os, subprocess, sys, time\n"
        f"fd = os.open('/dev/shm/{name}', os.O_CREAT | os.O_RDWR); os.ftruncate(fd, 4096)\n"
        "m = mmap.mmap(fd, 4096); print('ready', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(["python3", "-c", script], start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert (SHM_DIR / name).exists()
        stop_process_group(proc, 0.2, term_group=True)
        assert not (SHM_DIR / name).exists()
        assert other.exists()
    finally:
        other.unlink(missing_ok=True)
        (SHM_DIR / name).unlink(missing_ok=True)
