"""Helpers shared by the launchers of server processes (tritonserver, the local T4 endpoint)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def deprioritize_session(leader_pid: int, nice: int) -> list[str]:
    """Lowers the CPU priority of a session leader's whole session (it was started with
    start_new_session=True), so what it runs cannot starve the processes outside it.

    Linux puts each session in its own scheduling group when autogroup is on (the default), and
    nice values then only share CPU *inside* a group: the group's own nice (/proc/PID/autogroup)
    is what ranks it against the others; without autogroup the processes' nice values do. Both
    are set. Returns what could not be set (the caller logs it; a missing knob is not an error).
    """
    problems = []
    autogroup = Path(f"/proc/{leader_pid}/autogroup")
    if autogroup.exists():
        try:
            autogroup.write_text(str(nice))
        except OSError as err:
            problems.append(f"{autogroup}: {err}")
    try:
        os.setpriority(os.PRIO_PGRP, leader_pid, nice)  # every thread of its process group
    except OSError as err:
        problems.append(f"nice {nice} for process group {leader_pid}: {err}")
    return problems


def stop_process_group(proc: subprocess.Popen, grace_s: float, *, term_group: bool) -> None:
    """SIGTERM (to the leader, or its whole group), wait up to grace_s, then SIGKILL the group so
    no child (backend stubs, engine cores) outlives it, even when the leader already exited."""
    if proc.poll() is None:
        try:
            if term_group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
