"""Brings back a python-backend model whose stub process died (SIGKILL, OOM killer, segfault).

Triton 2.51's python backend does not restart a dead stub, nor report it: the model stays READY,
the server log says nothing, and every request to it fails after ~1 s with "Stub process
't2_0_0' is not healthy." for as long as the server runs (measured: still so 2 minutes after a
SIGKILL). The stub's own children (vLLM's EngineCore and its worker) are orphaned and keep their
KV cache until the server stops. The BLS falls back meanwhile (routenlp_core/cascade.py), but a tier
down for good would make every fallback permanent.

The supervisor watches the server's stub processes (their argv names the model's version folder
and the instance) every `poll_s`. A stub that vanished while its model version is still READY
and the model's current config still expects that instance is dead (a deliberate unload, a new
version or a rescale makes the version non-READY or drops the instance first). Seen so on two
polls in a row, the supervisor kills the orphans in the server's process group and reloads the
model version through the repository API with the model's current config pinned to that version:
a plain load would re-read config.pbtxt and could swap versions in the middle of a deploy.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from routenlp.processes import SHM_DIR, mapped_shm_files, remove_unmapped

STUB_BINARY = "triton_python_backend_stub"


class ModelControl(Protocol):  # routenlp.repository_api.RepositoryAPI
    def index(self) -> list[dict[str, Any]]: ...

    def config(self, model: str) -> dict[str, Any]: ...

    def load(self, model: str, config: Mapping[str, Any] | None = None) -> None: ...


@dataclass(frozen=True)
class Stub:
    model: str
    version: str
    instance: str  # e.g. t2_0_0
    region: str = ""  # its shared-memory region, a file under /dev/shm


@dataclass
class Recovery:
    model: str
    version: str
    instances: list[str]
    detected_at: float  # time.time()
    reaped: list[int] = field(default_factory=list)  # orphaned pids killed
    reload_s: float | None = None
    error: str | None = None


# ---------------------------------------------------------------- processes


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    argv: tuple[str, ...]


def processes() -> dict[int, Proc]:
    """Every live process (zombies excluded: a dead stub is a zombie until Triton reaps it)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = tuple(a.decode(errors="replace") for a in handle.read().split(b"\0") if a)
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            found[int(entry)] = Proc(int(entry), int(fields[1]), int(fields[2]), argv)
    return found


def parse_stub(argv: Iterable[str]) -> Stub | None:
    """The model, version and instance a stub serves, from its argv, measured on Triton 2.51:
    [stub, <repo>/<model>/<version>/model.py, shm region, sizes, parent pid, backend dir, ipc
    handle, <instance>, DEFAULT]. None for anything else (or a backend's own model.py)."""
    argv = list(argv)
    if len(argv) < 4 or Path(argv[0]).name != STUB_BINARY:
        return None
    model_py = Path(argv[1])
    if model_py.name != "model.py" or not model_py.parent.name.isdigit():
        return None
    return Stub(model=model_py.parent.parent.name, version=model_py.parent.name, instance=argv[-2], region=argv[2])


def remove_regions(stubs: Iterable[Stub], shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlinks the shared-memory regions of stubs whose server died: a crashed Triton leaves them
    behind, and /dev/shm is RAM (64 MB per stub here, so a few crashes of the default repository
    would hold gigabytes)."""
    removed = []
    for region in sorted({s.region for s in stubs if s.region and "/" not in s.region}):
        try:
            (shm_dir / region).unlink()
            removed.append(region)
        except FileNotFoundError:
            pass
    return removed


def live_stubs(server_pid: int, procs: Mapping[int, Proc]) -> dict[int, Stub]:
    return {p.pid: stub for p in procs.values() if p.ppid == server_pid and (stub := parse_stub(p.argv))}


def orphans(server_pid: int, procs: Mapping[int, Proc]) -> list[int]:
    """Members of the server's process group no longer below the server: children of a dead stub."""
    below, grew = {server_pid}, True
    while grew:
        new = {p.pid for p in procs.values() if p.ppid in below and p.pid not in below}
        below |= new
        grew = bool(new)
    return sorted(p.pid for p in procs.values() if p.pgid == server_pid and p.pid not in below)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def kill(pids: Iterable[int]) -> list[int]:
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


# ---------------------------------------------------------------- what the server expects


def ready_versions(index: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    return {(row["name"], str(row.get("version", ""))) for row in index if row.get("state") == "READY"}


def expected_instances(config: Mapping[str, Any]) -> set[str]:
    """Instance names Triton gives a python model's instance groups: <group name>_<k>, counted over
    the group's GPUs (one set per GPU). Empty for other backends (no stub of ours to watch)."""
    if config.get("backend") != "python":
        return set()
    names = set()
    for group in config.get("instance_group", []):
        count = int(group.get("count", 1)) * max(1, len(group.get("gpus", [])))
        names |= {f"{group['name']}_{k}" for k in range(count)}
    return names


def dead_instances(key: tuple[str, str], live: Iterable[Stub], expected: set[str]) -> list[str]:
    """Instances that the READY model version `key` still routes requests to but that have no stub."""
    running = {s.instance for s in live if (s.model, s.version) == key}
    return sorted(expected - running)


def reload_config(config: Mapping[str, Any], version: str) -> dict[str, Any]:
    """The model's current config pinned to the version that lost its stub: with the default
    "latest" policy a plain reload would bring in a newer version folder written meanwhile (seen:
    the BLS of a repository version whose tiers were still loading, in the middle of a deploy)."""
    return {**config, "version_policy": {"specific": {"versions": [int(version)]}}}


# ---------------------------------------------------------------- the supervisor


class StubSupervisor:
    def __init__(self, server_pid: int, api: ModelControl, log_path: Path | None = None, poll_s: float = 2.0, retry_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, scan: Callable[[], dict[int, Proc]] = processes) -> None:  # fmt: skip
        self.server_pid = server_pid
        self.scan = scan  # the process table (/proc), a parameter so the decisions can be tested on a table
        self.api = api
        self.log_path = log_path
        self.poll_s = poll_s
        self.retry_s = retry_s  # after a failed reload, doubled per failure up to 10 minutes
        self.clock = clock
        self.recoveries: list[Recovery] = []
        self._known: dict[int, Stub] = {}
        self._seen: set[Stub] = set()  # every stub this server ran (their regions, for _bury)
        self._shm_files: set[str] = set()  # /dev/shm files its process group mapped (for release)
        self._pending: set[tuple[str, str]] = set()  # versions that lost a stub, not yet resolved
        self._suspect: set[tuple[str, str]] = set()  # dead on the previous poll
        self._not_before: dict[tuple[str, str], float] = {}
        self._failures: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "StubSupervisor":
        self._known = live_stubs(self.server_pid, self.scan())
        self._seen |= set(self._known.values())
        self._thread = threading.Thread(target=self._run, name="stub-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)  # a reload in flight ends when the server stops

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            if not _alive(self.server_pid):
                self._bury()
                return  # the server is gone: nothing left to supervise
            try:
                self.poll()
            except Exception as err:  # the API refused or the server is stopping; try again next poll
                self._log(f"poll failed: {type(err).__name__}: {err}")

    def _bury(self) -> None:
        """The server died (a crash: a clean stop stops the supervisor first). Its stubs' vLLM
        processes outlive it holding copies of its sockets, so a client's call in flight hangs
        until its timeout instead of failing; they also hold the KV cache a restart needs."""
        leftovers = kill(p.pid for p in self.scan().values() if p.pgid == self.server_pid and p.pid != self.server_pid)
        regions = remove_regions(self._seen)
        self._log(f"tritonserver (pid {self.server_pid}) is gone; killed its leftover processes {leftovers}; removed {len(regions)} shared-memory regions")
        self.release_shared_memory()

    def release_shared_memory(self) -> list[str]:
        """After the server is gone (Deployment.stop calls it too: a SIGKILL the supervisor had
        no time to notice), unlinks the /dev/shm files its processes mapped and nobody maps now."""
        removed = remove_regions(self._seen) + remove_unmapped(self._shm_files)
        if removed:
            self._log(f"released {len(removed)} shared-memory files of tritonserver (pid {self.server_pid}): {', '.join(removed)}")
        return removed

    def poll(self) -> list[Recovery]:
        """One look at the stubs; reloads the model versions confirmed dead. Returns what it did."""
        procs = self.scan()
        live = live_stubs(self.server_pid, procs)
        self._shm_files |= mapped_shm_files(p.pid for p in procs.values() if p.pgid == self.server_pid)
        self._pending |= {(s.model, s.version) for pid, s in self._known.items() if pid not in live}
        self._known = live
        self._seen |= set(live.values())
        if not self._pending:
            return []
        ready = ready_versions(self.api.index())
        dead: dict[tuple[str, str], list[str]] = {}
        for key in sorted(self._pending):
            # not READY: unloaded, replaced or never loaded, nothing to bring back
            missing = dead_instances(key, live.values(), expected_instances(self.api.config(key[0]))) if key in ready else []
            if missing:
                dead[key] = missing
            else:
                self._pending.discard(key)
        confirmed = [key for key in dead if key in self._suspect and self.clock() >= self._not_before.get(key, 0.0)]
        self._suspect = set(dead)
        return [self._recover(key, dead[key]) for key in confirmed]

    def _recover(self, key: tuple[str, str], instances: list[str]) -> Recovery:
        model, version = key
        recovery = Recovery(model, version, instances, time.time())
        # A fresh look at /proc: the orphans hold a KV cache that the new engine needs.
        recovery.reaped = kill(orphans(self.server_pid, processes()))
        self._log(f"{model} version {version}: no stub for {', '.join(instances)} while the model is READY; "
                  f"killed orphaned processes {recovery.reaped}; reloading {model} version {version}")  # fmt: skip
        started = time.perf_counter()
        try:
            self.api.load(model, reload_config(self.api.config(model), version))
        except Exception as err:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            wait = min(600.0, self.retry_s * 2 ** (failures - 1))
            self._not_before[key] = self.clock() + wait
            recovery.error = f"{type(err).__name__}: {err}"
            self._log(f"{model} version {version}: reload failed ({recovery.error}); next try in {wait:.0f} s")
        else:
            recovery.reload_s = time.perf_counter() - started
            self._pending.discard(key)
            self._suspect.discard(key)
            self._failures.pop(key, None)
            self._log(f"{model} version {version}: reloaded in {recovery.reload_s:.1f} s")
        self.recoveries.append(recovery)
        return recovery

    def _log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} stub-supervisor: {message}"
        if self.log_path is None:
            print(line, flush=True)
            return
        with open(self.log_path, "a") as handle:
            handle.write(line + "\n")
