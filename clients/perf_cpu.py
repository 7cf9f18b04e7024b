"""CPU time per request of each process on the path, read around a perf_analyzer run.

On a CPU-bound machine the throughput ratio of two ways to answer a request is about the inverse
ratio of the CPU each costs, so this says what bounds the routed/direct ratio: tritonserver, the
python-backend stub(s) of the model called (the routing BLS, or the direct T1 runner) and
perf_analyzer itself. Read from /proc (Linux; the server must run on this machine) and getrusage.
"""

from __future__ import annotations

import json
import os
import resource
import urllib.request
from pathlib import Path
from typing import Any

STUB_BINARY = "triton_python_backend_stub"
_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, user + system CPU seconds) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def stub_model(pid: int) -> str | None:
    """The model a python-backend stub serves (argv[1] is <repository>/<model>/<version>/model.py)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if len(argv) < 2 or not argv[0].decode(errors="replace").endswith(STUB_BINARY):
        return None
    parts = Path(argv[1].decode(errors="replace")).parts
    return parts[-3] if len(parts) >= 3 else None


def process_cpu(server_pid: int, model: str) -> dict[str, float]:
    """CPU seconds so far of tritonserver and of the stubs (every instance) of `model`."""
    stubs = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent, seconds = _stat(int(entry.name))
            if parent == server_pid and stub_model(int(entry.name)) == model:
                stubs += seconds
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # a process that ended meanwhile
    return {"tritonserver": _stat(server_pid)[1], "model stubs": stubs}


def _answered(http_url: str, model: str) -> int:
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as response:
        stats = json.loads(response.read())["model_stats"]
    return sum(int(entry["inference_stats"]["success"]["count"]) for entry in stats)


class CpuProbe:
    """`with probe.on(model): run()`, then probe.result(): microseconds of CPU per answered request
    of `model` over the block, per process (perf_analyzer: the children this process waited for)."""

    def __init__(self, http_url: str, server_pid: int) -> None:
        self.http_url, self.server_pid = http_url, server_pid
        self.model: str | None = None
        self._before: tuple | None = None
        self._result: dict[str, Any] = {}

    def on(self, model: str) -> "CpuProbe":
        self.model = model
        return self

    def _read(self) -> tuple:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return _answered(self.http_url, self.model), process_cpu(self.server_pid, self.model), children.ru_utime + children.ru_stime

    def __enter__(self) -> "CpuProbe":
        self._before = self._read()
        return self

    def __exit__(self, *exc) -> None:
        (n0, cpu0, client0), (n1, cpu1, client1) = self._before, self._read()
        requests = n1 - n0
        seconds = {name: cpu1[name] - cpu0[name] for name in cpu1} | {"perf_analyzer": client1 - client0}
        self._result = {name: round(s / requests * 1e6, 1) for name, s in seconds.items()} if requests else {}
        self._result["total"] = round(sum(self._result.values()), 1) if requests else None

    def result(self) -> dict[str, Any]:
        return dict(self._result)
