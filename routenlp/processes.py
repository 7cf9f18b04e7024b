"""Helpers shared by the launchers of server processes (tritonserver, the local T4 endpoint, the
gateway): port picking, start with a retry when a picked port was taken, readiness, clean stop.

The port race: a port found free here is only bound by the server a moment (Triton: after its
models loaded, up to minutes) later, and another process may take it in between; Triton then
exits with "Socket '127.0.0.1:PORT' already in use" (issue 21: a CI run lost a server that way).
Two defences: ports are picked below the kernel's ephemeral range, so no outgoing connection on
this machine (whose local ports come from that range) can take one; and a start that fails on a
taken port is tried again on fresh ports (start_with_port_retry), saying so in the log and on
stderr. A server counts as ready only when its own process listens on its ports, so a server of
another run answering on a port we picked is not mistaken for ours.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

SHM_DIR = Path("/dev/shm")
PICK_FLOOR = 20000  # below it sit well-known service ports (8000-8002 for a `routenlp serve`)
PORT_ATTEMPTS = 4  # starts on fresh ports before a taken port is an error
# What tritonserver (Socket ... already in use), uvicorn / vLLM ([Errno 98] address already in use)
# and gRPC (Address already in use) write when a port is taken.
PORT_TAKEN = re.compile(r"already in use|address in use|EADDRINUSE", re.IGNORECASE)
_pick = random.SystemRandom()  # not seeded by tests that seed `random`: parallel runs must differ
# Servers that became ready and were not stopped through stop_process_group: pid -> (what, process, log)
_running: dict[int, tuple[str, subprocess.Popen, Path]] = {}


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    try:
        low, high = (int(field) for field in path.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A port nothing listens on now, outside the ephemeral range (see the module doc)."""
    low = ephemeral_range()[0]
    for _ in range(200):
        port = _pick.randrange(PICK_FLOOR, low) if low > PICK_FLOOR + 100 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError(f"no free port found in {PICK_FLOOR}-{low - 1}")


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process `pid` itself listens on (its socket inodes matched in /proc/net/tcp*)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    fields = line.split()
                    if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def port_taken(log_path: Path, offset: int) -> str | None:
    """The line a server wrote to its log since byte `offset` saying a port was taken, or None."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    return next((line.strip() for line in text.splitlines() if PORT_TAKEN.search(line)), None)


def log_size(path: Path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def say(log_path: Path, message: str) -> None:
    """A line in the server's own log and on stderr: what happened to a server must not be silent."""
    line = f"routenlp: {message}"
    print(line, file=sys.stderr, flush=True)
    with open(log_path, "a") as handle:
        handle.write(line + "\n")


def mentioned_ports(line: str, ports: Iterable[int]) -> set[int]:
    """Which of `ports` a log line names (Triton: Socket '127.0.0.1:PORT'; uvicorn: ('127.0.0.1', PORT))."""
    numbers = {int(n) for n in re.findall(r"\d+", line)}
    return numbers & set(ports)


def repick(ports: dict[str, int], picked: Iterable[str], taken: str) -> dict[str, int] | None:
    """Fresh ports for the `picked` names of `ports` (name -> port), or None when the taken port
    named in the log line `taken` was not one of ours to choose (given by the user)."""
    picked = set(picked)
    named = mentioned_ports(taken, ports.values())
    if not picked or any(ports[name] in named for name in ports if name not in picked):
        return None
    return {name: free_port() if name in picked else port for name, port in ports.items()}


def start_with_port_retry(
    start_once: Callable[[], None], repick: Callable[[str], Sequence[int] | None], *, what: str, log_path: Path,
    ports: Callable[[], Sequence[int]], attempts: int = PORT_ATTEMPTS,
) -> list[str]:
    """start_once() (which stops what it started before raising), tried again on fresh ports when it
    failed because a port was taken and repick(the log line) can choose new ones (None: the port was
    given by the user, or is kept on purpose). Returns the notes of the retries (also in the log
    and on stderr); a taken port that cannot be re-picked, or taken again on every attempt, raises
    the start's error with a sentence saying so first."""
    notes: list[str] = []
    for attempt in range(1, attempts + 1):
        offset = log_size(log_path)
        try:
            start_once()
            return notes
        except Exception as err:
            taken = port_taken(log_path, offset)
            if taken is None:
                raise
            old = list(ports())
            new = repick(taken) if attempt < attempts else None
            if new is None:
                why = "that port was given, not picked"
                if attempt == attempts:
                    why = f"{attempts} port sets were all taken"
                message = f"{what} could not bind port(s) {old}: another process holds one ({taken}); {why}"
                say(log_path, message)
                raise type(err)(f"{message}\n{err}") from err
            notes.append(f"{what} lost a port of {old} to another process before binding it ({taken}); "
                         f"starting it again on fresh ports {new} (attempt {attempt + 1} of {attempts})")
            say(log_path, notes[-1])
    raise AssertionError("unreachable")


def start_on_one_port(server, start_once: Callable[[], None], what: str) -> None:
    """start_with_port_retry for a server with one `port` (picked afresh if `server.picked` names
    it), a `log_path` and a `port_retries` list (the T4 endpoint, the gateway)."""

    def fresh_port(taken: str) -> list[int] | None:
        ports = repick({"port": server.port}, server.picked, taken)
        if ports is None:
            return None
        server.port = ports["port"]
        return [server.port]

    server.port_retries += start_with_port_retry(
        start_once, fresh_port, what=what, log_path=server.log_path, ports=lambda: [server.port]
    )


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


def how_it_ended(returncode: int) -> str:
    return f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exited with code {returncode}"


def lost_servers() -> list[str]:
    """Servers started here that exited without being stopped (a crash, a kill), each said once:
    what it was, how it ended and the end of its log. The test suite prints them with a failure."""
    lost = []
    for pid, (what, process, log_path) in list(_running.items()):
        code = process.poll()
        if code is None:
            continue
        del _running[pid]
        lost.append(f"{what} (pid {pid}) was lost: {how_it_ended(code)}; log {log_path}:\n{log_tail(log_path, 15)}")
    return lost


def stop_process_group(proc: subprocess.Popen, grace_s: float, *, term_group: bool) -> None:
    """SIGTERM (to the leader, or its whole group), wait up to grace_s, then SIGKILL the group so
    no child (backend stubs, engine cores) outlives it, even when the leader already exited; then
    remove the shared memory the group had mapped, which a SIGKILL leaves behind."""
    _running.pop(proc.pid, None)
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
    process: subprocess.Popen, is_ready: Callable[[], bool], timeout_s: float, *, what: str, log_path: Path,
    error: type[Exception], poll_s: float = 0.5, ports: Sequence[int] = (),
) -> None:
    """Poll is_ready() until it holds and `process` itself listens on `ports` (not another server
    that happens to answer there); raise `error` with the log's tail if the process exits first or
    timeout_s runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise error(f"{what} exited with code {process.returncode} before it was ready; log {log_path}:\n{log_tail(log_path)}")
        if is_ready() and set(ports) <= listening_ports(process.pid):
            _running[process.pid] = (what, process, Path(log_path))
            return
        time.sleep(poll_s)
    raise error(f"{what} not ready after {timeout_s:.0f}s; log {log_path}:\n{log_tail(log_path)}")
