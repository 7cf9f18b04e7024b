"""Checks that the serving stack works on this machine, each with a concrete fix when it does not."""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from routenlp.stack import StackPaths
from routenlp_core.paths import BENCHMARK_DIR, shared_data_dir

INSTALL_FIX = "run `make install` (scripts/install.sh)"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    in_venv = sys.prefix != sys.base_prefix
    ok = sys.version_info[:2] == (3, 11) and in_venv
    return Check("python", ok, f"{version} at {sys.prefix}", "" if ok else f"use Python 3.11 from the project venv; {INSTALL_FIX}")


def check_numpy() -> Check:
    import numpy

    ok = int(numpy.__version__.split(".")[0]) < 2
    return Check("numpy<2", ok, numpy.__version__, "" if ok else "the Triton 2.51 stub needs numpy<2: " + INSTALL_FIX)


def check_import(module: str, distribution: str | None = None, fix: str = INSTALL_FIX) -> Callable[[], Check]:
    def run() -> Check:
        try:
            mod = importlib.import_module(module)
        except Exception as err:  # any import failure is the finding
            return Check(module, False, f"{type(err).__name__}: {err}"[:200], fix)
        version = importlib.metadata.version(distribution) if distribution else getattr(mod, "__version__", "imported")
        return Check(module, True, str(version))

    return run


def check_vllm() -> Check:
    # In a subprocess: importing vLLM takes seconds and sets up process-wide state.
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("vllm", False, last[:200], "uninstall CUDA torchvision/torchaudio if present; " + INSTALL_FIX)
    return Check("vllm", True, f"{proc.stdout.strip().splitlines()[-1]} (import {seconds:.1f}s)")


def check_perf_analyzer() -> Check:
    from clients.perf import PerfAnalyzerError, perf_analyzer_version

    paths = StackPaths.discover()
    if not paths.perf_analyzer_bin.exists():
        return Check("perf_analyzer", False, f"missing {paths.perf_analyzer_bin}", INSTALL_FIX)
    try:
        return Check("perf_analyzer", True, perf_analyzer_version())
    except PerfAnalyzerError as err:
        return Check("perf_analyzer", False, str(err)[:200], "apt-get install libb64-0d; pip install nvidia-cuda-runtime-cu12 (" + INSTALL_FIX + ")")


def check_tritonserver() -> Check:
    """Start a real server on the self-test repository and answer one gRPC request."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from routenlp.selftest.repository import build_selftest_repository
    from routenlp.triton_server import ServerStartError, TritonServer

    paths = StackPaths.discover()
    if not paths.tritonserver_bin.exists():
        return Check("tritonserver", False, f"missing {paths.tritonserver_bin}", INSTALL_FIX)
    if not paths.python_stub.exists():
        return Check("tritonserver", False, "python backend stub not wired", f"python -m routenlp.stack wire {sys.prefix}")
    with tempfile.TemporaryDirectory() as tmp:
        repo = build_selftest_repository(Path(tmp) / "repo")
        started = time.monotonic()
        try:
            with TritonServer(repo, Path(tmp) / "server.log", load_models=["echo"]) as server:
                version = server.metadata()["version"]
                ready_s = time.monotonic() - started
                client = grpcclient.InferenceServerClient(server.grpc_url)
                text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
                text.set_data_from_numpy(np.array([[b"doctor"]], dtype=object))
                answer = client.infer("echo", [text]).as_numpy("OUTPUT").ravel()[0]
                client.close()
        except ServerStartError as err:
            return Check("tritonserver", False, str(err).splitlines()[0][:200], "see the server log above; " + INSTALL_FIX)
    ok = answer == b"doctor"
    return Check("tritonserver", ok, f"{version}, python backend ready in {ready_s:.1f}s, gRPC echo {'ok' if ok else 'WRONG'}")


def check_benchmark() -> Check:
    from routenlp.data import benchmark_stats
    from routenlp_core.tasks import TASK_NAMES

    try:
        rows = benchmark_stats(BENCHMARK_DIR)
    except Exception as err:  # a missing or broken file is the finding
        return Check("benchmark", False, f"{type(err).__name__}: {err}"[:200], "routenlp data build (needs ../shared/data)")
    present = {(row["task"], row["split"]) for row in rows if row["n"] > 0}
    missing = [f"{t}/{s}" for t in TASK_NAMES for s in ("train", "calibration", "dev") if (t, s) not in present]
    total = sum(row["n"] for row in rows)
    if missing:
        return Check("benchmark", False, f"missing {', '.join(missing)}", "routenlp data build (needs ../shared/data)")
    return Check("benchmark", True, f"{total} records, 6 tasks x 3 splits in {BENCHMARK_DIR.name}/")


def check_raw_data() -> Check:
    # Informational: raw data is needed only to rebuild the committed benchmark.
    raw = shared_data_dir()
    return Check("raw data (optional)", True, f"{raw} {'present' if raw.exists() else 'absent (only needed by data build)'}")


def check_libb64() -> Check:
    found = shutil.which("ldconfig") and "libb64.so.0d" in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    return Check("libb64-0d", bool(found), "found" if found else "missing", "" if found else "apt-get install libb64-0d")


CHECKS: tuple[Callable[[], Check], ...] = (
    check_python,
    check_numpy,
    check_import("torch"),
    check_import("onnxruntime"),
    check_import("transformers"),
    check_import("tritonclient.grpc", "tritonclient"),
    check_vllm,
    check_libb64,
    check_perf_analyzer,
    check_tritonserver,
    check_benchmark,
    check_raw_data,
)


def run_checks(progress: Callable[[str], None] = lambda name: None) -> list[Check]:
    results = []
    for check in CHECKS:
        progress(getattr(check, "__name__", "check"))
        try:
            results.append(check())
        except Exception as err:  # a crashing check is reported, never hides the others
            results.append(Check(getattr(check, "__name__", "check"), False, f"{type(err).__name__}: {err}"[:200], INSTALL_FIX))
    return results
