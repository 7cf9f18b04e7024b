"""The stub supervisor's decisions, on process tables and a stand-in repository API (the real
tritonserver run is tests/integration/test_reliability.py), and its orphan search on real processes."""

import os
import signal
import subprocess
import sys
import time

from routenlp.stub_supervisor import Proc, Stub, StubSupervisor, expected_instances, kill, orphans, parse_stub, processes, reload_config, remove_regions

SERVER = 10**9  # above any pid_max: the real /proc never holds this group, so nothing real is killed
STUB = "/venv/lib/python3.11/site-packages/pytriton/tritonserver/backends/python/triton_python_backend_stub"


def _stub_argv(model: str, version: int, instance: str) -> tuple[str, ...]:
    # as measured on Triton 2.51 (ps of a t2 stub)
    return (STUB, f"/repo/{model}/{version}/model.py", f"triton_python_backend_shm_region_{instance}", "1048576", "1048576", str(SERVER), "/backends/python", "336", instance, "DEFAULT")


def _table(*stubs: tuple[int, str, int, str]) -> dict[int, Proc]:
    table = {SERVER: Proc(SERVER, 1, SERVER, ("tritonserver",))}
    for pid, model, version, instance in stubs:
        table[pid] = Proc(pid, SERVER, SERVER, _stub_argv(model, version, instance))
    return table


def _config(model: str, count: int = 1, backend: str = "python") -> dict:
    return {"name": model, "backend": backend, "instance_group": [{"name": f"{model}_0", "kind": "KIND_CPU", "count": count, "gpus": []}]}


class Repository:
    """Triton's repository API as the supervisor uses it (index, config, load), recording loads."""

    def __init__(self, configs: dict, ready: set, fail: bool = False):
        self.configs, self.ready, self.fail, self.loads = configs, ready, fail, []

    def index(self):
        return [{"name": m, "version": v, "state": "READY"} for m, v in sorted(self.ready)]

    def config(self, model):
        return self.configs[model]

    def load(self, model, config=None):
        self.loads.append((model, config))
        if self.fail:
            raise RuntimeError("load refused")


def _supervisor(repository, tmp_path, tables, **kwargs):
    current = {"table": tables[0]}
    supervisor = StubSupervisor(SERVER, repository, log_path=tmp_path / "supervisor.log", scan=lambda: current["table"], **kwargs)
    supervisor.poll()  # first look: the stubs it knows

    def poll(table):
        current["table"] = table
        return supervisor.poll()

    return supervisor, poll


def test_stub_argv_names_model_version_and_instance():
    assert parse_stub(_stub_argv("t2", 1, "t2_0_0")) == Stub("t2", "1", "t2_0_0", "triton_python_backend_shm_region_t2_0_0")
    assert parse_stub(("/usr/bin/python", "/repo/t2/1/model.py", "x", "y")) is None
    assert parse_stub((STUB, "/opt/tritonserver/backends/vllm/model.py", "x", "1", "t2_0_0", "DEFAULT")) is None  # a backend's own model.py


def test_expected_instances_follow_the_instance_groups():
    assert expected_instances(_config("t2")) == {"t2_0_0"}
    assert expected_instances(_config("routenlp", count=2)) == {"routenlp_0_0", "routenlp_0_1"}
    gpus = {"backend": "python", "instance_group": [{"name": "t3_0", "count": 1, "gpus": [0, 1]}]}
    assert expected_instances(gpus) == {"t3_0_0", "t3_0_1"}
    assert expected_instances(_config("router", backend="onnxruntime")) == set()


def test_a_reload_pins_the_version_that_lost_its_stub():
    latest = {**_config("routenlp", count=2), "version_policy": {"latest": {"num_versions": 1}}}
    assert reload_config(latest, "2") == {**_config("routenlp", count=2), "version_policy": {"specific": {"versions": [2]}}}


def test_a_stub_gone_while_its_model_is_ready_is_reloaded_with_the_current_config(tmp_path):
    pinned = {**_config("t2"), "version_policy": {"specific": {"versions": [1]}}}
    repository = Repository({"t2": pinned, "t3": _config("t3")}, {("t2", "1"), ("t3", "1")})
    both = _table((201, "t2", 1, "t2_0_0"), (301, "t3", 1, "t3_0_0"))
    without_t2 = _table((301, "t3", 1, "t3_0_0"))
    supervisor, poll = _supervisor(repository, tmp_path, [both])
    assert poll(without_t2) == []  # once could be a race with an unload: look again
    [recovery] = poll(without_t2)
    assert (recovery.model, recovery.version, recovery.instances, recovery.error) == ("t2", "1", ["t2_0_0"], None)
    assert repository.loads == [("t2", pinned)]  # the pinned version stays pinned
    assert poll(_table((202, "t2", 1, "t2_0_0"), (301, "t3", 1, "t3_0_0"))) == [] and len(repository.loads) == 1
    assert "t2 version 1: reloaded" in (tmp_path / "supervisor.log").read_text()


def test_unloads_new_versions_and_rescales_are_left_alone(tmp_path):
    # t2 version 1 unloaded (no longer READY); t3 rescaled from 2 instances to 1
    repository = Repository({"t2": _config("t2"), "t3": _config("t3", count=1)}, {("t2", "2"), ("t3", "1")})
    before = _table((201, "t2", 1, "t2_0_0"), (301, "t3", 1, "t3_0_0"), (302, "t3", 1, "t3_0_1"))
    after = _table((211, "t2", 2, "t2_0_0"), (301, "t3", 1, "t3_0_0"))
    supervisor, poll = _supervisor(repository, tmp_path, [before])
    assert poll(after) == [] and poll(after) == [] and repository.loads == []


def test_a_failed_reload_is_retried_after_a_backoff(tmp_path):
    now = [0.0]
    repository = Repository({"t2": _config("t2")}, {("t2", "1")}, fail=True)
    dead = _table()
    supervisor, poll = _supervisor(repository, tmp_path, [_table((201, "t2", 1, "t2_0_0"))], retry_s=30.0, clock=lambda: now[0])
    poll(dead)
    [failed] = poll(dead)
    assert failed.error == "RuntimeError: load refused" and failed.reload_s is None
    assert poll(dead) == [] and len(repository.loads) == 1  # backing off
    now[0] = 31.0
    repository.fail = False
    [recovered] = poll(dead)
    assert recovered.error is None and len(repository.loads) == 2


def test_orphans_are_the_server_group_members_no_longer_below_it():
    # a "server" that keeps one child and leaves one orphan (its parent exited), like a killed stub's EngineCore
    script = (
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "out = subprocess.run(['sh', '-c', 'sleep 60 >/dev/null 2>&1 & echo $!'], capture_output=True, text=True).stdout\n"
        "print(child.pid, out.strip(), flush=True)\n"
        "time.sleep(60)\n"
    )
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child, orphan = (int(pid) for pid in server.stdout.readline().split())
        assert orphans(server.pid, processes()) == [orphan]
        assert kill([orphan]) == [orphan]
        deadline = time.monotonic() + 10
        while orphan in processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert orphan not in processes() and child in processes()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_a_dead_servers_leftover_processes_are_killed_and_the_supervisor_stops(tmp_path):
    # a "server" that dies (SIGKILL, as in a crash) leaving a child running, like a stub's vLLM EngineCore
    script = "import subprocess, time\nprint(subprocess.Popen(['sleep', '60']).pid, flush=True)\ntime.sleep(60)\n"
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        leftover = int(server.stdout.readline())
        supervisor = StubSupervisor(server.pid, Repository({}, set()), log_path=tmp_path / "supervisor.log", poll_s=0.1).start()
        server.kill()  # a zombie until reaped, which the supervisor reads as dead
        deadline = time.monotonic() + 10
        while leftover in processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leftover not in processes()
        supervisor._thread.join(5)
        assert not supervisor._thread.is_alive()
        assert f"killed its leftover processes [{leftover}]" in (tmp_path / "supervisor.log").read_text()
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait()


def test_a_dead_servers_shared_memory_regions_are_removed_and_nothing_else(tmp_path):
    stubs = [parse_stub(_stub_argv("t2", 1, "t2_0_0")), parse_stub(_stub_argv("routenlp", 1, "routenlp_0_0"))]
    for stub in stubs:
        (tmp_path / stub.region).write_bytes(b"\0" * 16)
    (tmp_path / "psm_other").write_bytes(b"x")  # another program's segment
    already_gone = Stub("t3", "1", "t3_0_0", "triton_python_backend_shm_region_t3_0_0")
    assert remove_regions([*stubs, already_gone, Stub("x", "1", "x_0_0", "../escape")], shm_dir=tmp_path) == sorted(s.region for s in stubs)
    assert [p.name for p in tmp_path.iterdir()] == ["psm_other"]


def test_shared_memory_the_server_group_mapped_is_released_once_nobody_maps_it(tmp_path):
    """A SIGKILLed server's engine processes leave their /dev/shm segments behind; the supervisor
    remembers what the group mapped while alive and removes it after, nothing anyone still maps."""
    from routenlp.processes import SHM_DIR

    name = f"psm_routenlp_supervisor_test_{os.getpid()}"
    script = (
        "import mmap, os, time\n"
        f"fd = os.open('/dev/shm/{name}', os.O_CREAT | os.O_RDWR); os.ftruncate(fd, 4096)\n"
        "m = mmap.mmap(fd, 4096); print('ready', flush=True); time.sleep(60)\n"
    )
    engine = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert engine.stdout.readline().strip() == "ready"
        table = {SERVER: Proc(SERVER, 1, SERVER, ("tritonserver",)), engine.pid: Proc(engine.pid, SERVER, SERVER, ("VLLM::EngineCore",))}
        supervisor, _ = _supervisor(Repository({}, set()), tmp_path, [table])
        assert supervisor.release_shared_memory() == []  # still mapped: kept
        assert (SHM_DIR / name).exists()
        engine.kill()
        engine.wait()
        assert supervisor.release_shared_memory() == [name]
        assert not (SHM_DIR / name).exists()
        assert name in (tmp_path / "supervisor.log").read_text()
    finally:
        engine.kill()
        (SHM_DIR / name).unlink(missing_ok=True)
