"""Helpers shared by the launchers of server processes (tritonserver, the local T4 endpoint)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

SHM_DIR = Path("/dev/shm")


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


def group_pids(pgid: int) -> list[int]:
    """The live processes of a process group (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[2]) == pgid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def mapped_shm_files(pids: Iterable[int], shm_dir: Path = SHM_DIR) -> set[str]:
    """Names of the files under shm_dir these processes have mapped (/proc/PID/maps): Triton's
    stub regions, and the segments vLLM's engine processes share (psm_*, hundreds of MB each)."""
    prefix = f" {shm_dir}/"
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as handle:
                for line in handle:
                    at = line.find(prefix)
                    if at >= 0:
                        name = line[at + len(prefix):].strip().removesuffix(" (deleted)")
                        if name and "/" not in name:
                            found.add(name)
        except OSError:  # gone meanwhile
            continue
    return found


def remove_unmapped(names: Iterable[str], shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlinks those of `names` that no live process maps any more: what a killed process group
    shared, which nobody else would remove from /dev/shm (i.e. RAM) until a reboot."""
    pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    removed = []
    for name in sorted(set(names) - mapped_shm_files(pids, shm_dir)):
        try:
            (shm_dir / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def stop_process_group(proc: subprocess.Popen, grace_s: float, *, term_group: bool) -> None:
    """SIGTERM (to the leader, or its whole group), wait up to grace_s, then SIGKILL the group so
    no child (backend stubs, engine cores) outlives it, even when the leader already exited; then
    remove the shared memory the group had mapped, which a SIGKILL leaves behind."""
    shared = mapped_shm_files(group_pids(proc.pid))
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
    deadline = time.monotonic() + 5.0  # the rest of the group exits (and unmaps) shortly after
    while group_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    remove_unmapped(shared)


def wait_until_ready(
    process: subprocess.Popen, is_ready: Callable[[], bool], timeout_s: float, *, what: str, log_path: Path, error: type[Exception], poll_s: float = 0.5
) -> None:
    """Poll is_ready() until it holds; raise `error` with the log's tail if the process exits first
    or timeout_s runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise error(f"{what} exited with code {process.returncode} before it was ready; log {log_path}:\n{log_tail(log_path)}")
        if is_ready():
            return
        time.sleep(poll_s)
    raise error(f"{what} not ready after {timeout_s:.0f}s; log {log_path}:\n{log_tail(log_path)}")
