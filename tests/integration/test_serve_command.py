"""`routenlp serve` as a user runs it: a subprocess that prints its URLs, answers, restarts a
tritonserver that crashed (SIGSEGV) and answers again, and stops cleanly (every child process gone,
exit 0) on SIGTERM. T4 is left out (--no-t4) to keep this short;
the full deployment with T4 is exercised by test_bls_routing.py through the same Deployment class."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from clients.route_client import RouteClient
from routenlp.commands.serve_cmd import VERSION_POLL_S
from routenlp.server_restarts import RESTARTS_FILE
from routenlp.stub_supervisor import processes

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 480


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and "pytest" not in cmdline:
            found.append(f"{pid}: {cmdline[:160]}")
    return found


def _read_until(process: subprocess.Popen, lines: list[str], marker: str) -> str:
    """Collects the command's output lines until one holds `marker` (or it ends, or time is up)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            break
    return "".join(lines)


def _tritonserver_pids(serve_pid: int) -> list[int]:
    """The tritonserver processes `routenlp serve` started (its children)."""
    return [p.pid for p in processes().values() if p.ppid == serve_pid and p.argv and p.argv[0].endswith("/tritonserver")]


def test_serve_prints_urls_answers_restarts_a_crashed_server_and_stops_cleanly_on_sigterm(tiny_repository, tmp_path):
    state = tmp_path / "state"
    command = [
        sys.executable, "-m", "routenlp.cli", "serve", "--repository", str(tiny_repository), "--no-t4",
        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--openai-port", "0", "--state-dir", str(state),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        printed = _read_until(process, lines, "Ctrl-C or SIGTERM")
        assert "Ctrl-C or SIGTERM" in printed, printed
        grpc_url = re.search(r"gRPC\s+(\S+)", printed).group(1)
        assert re.search(r"HTTP\s+http://127\.0\.0\.1:\d+", printed) and "restricted" in printed
        openai_url = re.search(r"OpenAI API\s+(http://127\.0\.0\.1:\d+)/v1", printed).group(1)
        with urllib.request.urlopen(openai_url + "/health/ready", timeout=10) as ready:
            assert ready.status == 200  # the gateway is up beside Triton (tenants: none, so keys get 401)
        client = RouteClient(grpc_url)
        answer = client.route("The provider may terminate this agreement at any time.", "legal_risk", max_tier="t1", request_id="serve-test")
        client.close()
        assert json.loads(answer.output)["label"] and answer.metadata["path"] == ["t1"]
        assert (state / "escalation_log.sqlite").exists() and (state / "admin_key").stat().st_mode & 0o077 == 0

        # A crashed tritonserver (2.51's python backend can segfault under load) is restarted on
        # the same ports and answers again; the restart is logged and recorded.
        time.sleep(VERSION_POLL_S + 1)  # let serve record the live versions once more
        (server_pid,) = _tritonserver_pids(process.pid)
        os.kill(server_pid, signal.SIGSEGV)
        printed = _read_until(process, lines, "ready again")
        assert "tritonserver died" in printed and "ready again" in printed, printed
        client = RouteClient(grpc_url)
        again = client.route("The provider may terminate this agreement at any time.", "legal_risk", max_tier="t1")
        client.close()
        assert again.metadata["path"] == ["t1"] and _tritonserver_pids(process.pid) not in ([], [server_pid])
        (restart,) = [json.loads(line) for line in (state / RESTARTS_FILE).read_text().splitlines()]
        assert "SIGSEGV" in restart["ended"] or "exited" in restart["ended"], restart
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            rest, _ = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            rest, _ = process.communicate()
    assert process.returncode == 0, "".join(lines) + rest
    assert "stopped" in rest
    assert _processes_mentioning(str(tiny_repository)) == []  # tritonserver and its stubs are gone
