"""routenlp.processes: lowering a started session's priority (the local T4 endpoint's)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

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


def _http_server(port: int, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _wait(process: subprocess.Popen, port: int, log_path: Path) -> None:
    from routenlp.processes import wait_until_ready

    wait_until_ready(process, lambda: _answers(port), 20, what="http.server", log_path=log_path, error=RuntimeError,
                     poll_s=0.1, ports=[port])


def test_picked_ports_lie_below_the_ephemeral_range():
    from routenlp.processes import PICK_FLOOR, ephemeral_range, free_port

    low = ephemeral_range()[0]
    assert all(PICK_FLOOR <= free_port() < low for _ in range(50))


def test_a_port_taken_between_pick_and_start_is_picked_afresh_and_said(tmp_path, capsys):
    """The race of issue 21: another server takes the picked port (and answers on it) before ours
    binds it. Ours exits with 'Address already in use'; the foreign server answering is not taken
    for ours; the start is retried on a fresh port and the retry is said on stderr and in the log."""
    from routenlp.processes import free_port, listening_ports, start_on_one_port

    class Server:
        port, picked, port_retries, log_path, process = free_port(), ("port",), [], tmp_path / "server.log", None

        def start_once(self):
            self.process = _http_server(self.port, self.log_path)
            try:
                _wait(self.process, self.port, self.log_path)
            except BaseException:
                stop_process_group(self.process, 1.0, term_group=True)
                raise

    server = Server()
    taken = server.port
    intruder = _http_server(taken, tmp_path / "intruder.log")
    try:
        deadline = time.monotonic() + 10
        while not _answers(taken) and time.monotonic() < deadline:
            time.sleep(0.05)
        start_on_one_port(server, server.start_once, "http.server")
        assert server.port != taken
        assert server.port in listening_ports(server.process.pid)
        assert len(server.port_retries) == 1 and "already in use" in server.port_retries[0].lower()
        assert f"lost a port of [{taken}]" in capsys.readouterr().err
        assert f"fresh ports [{server.port}]" in server.log_path.read_text()
    finally:
        stop_process_group(intruder, 1.0, term_group=True)
        if server.process is not None:
            stop_process_group(server.process, 1.0, term_group=True)


def test_a_given_port_that_is_taken_fails_saying_so(tmp_path):
    from routenlp.processes import free_port, start_on_one_port

    class Server:
        port, picked, port_retries, log_path = free_port(), (), [], tmp_path / "server.log"

        def start_once(self):
            process = _http_server(self.port, self.log_path)
            try:
                _wait(process, self.port, self.log_path)
            finally:
                stop_process_group(process, 1.0, term_group=True)

    server = Server()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", server.port))
        holder.listen()
        held = rf"could not bind port\(s\) \[{server.port}\]: another process holds one .*that port was given"
        with pytest.raises(RuntimeError, match=held):
            start_on_one_port(server, server.start_once, "http.server")
    assert server.port_retries == []


def test_a_server_that_dies_unstopped_is_reported_once_as_lost(tmp_path):
    from routenlp.processes import free_port, lost_servers

    port, log_path = free_port(), tmp_path / "server.log"
    process = _http_server(port, log_path)
    _wait(process, port, log_path)
    lost_servers()  # whatever earlier tests left behind
    assert lost_servers() == []
    os.killpg(process.pid, 9)
    process.wait()
    [lost] = lost_servers()
    assert lost.startswith(f"http.server (pid {process.pid}) was lost: killed by SIGKILL; log {log_path}")
    assert lost_servers() == []
    stop_process_group(process, 1.0, term_group=True)
