"""Start and stop a real tritonserver process: free ports, readiness wait, clean shutdown.

Used by `routenlp serve`, `routenlp doctor`, the demo and the integration tests alike, so all of
them run the server the same way.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from routenlp.processes import free_port, log_tail, stop_process_group
from routenlp.stack import StackPaths

PYTHON_SHM_BYTES = 64 * 1024 * 1024  # per python-backend stub (see TritonServer.command)


class ServerStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message carries the end of its log."""


@dataclass
class TritonServer:
    model_repository: Path
    log_path: Path
    # "*" loads every model in the repository; explicit mode keeps the repository API usable.
    load_models: Sequence[str] = ("*",)
    extra_args: Sequence[str] = ()
    env: dict[str, str] | None = None
    address: str = "127.0.0.1"  # "0.0.0.0" to serve other machines; clients here still use 127.0.0.1
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self, paths: StackPaths) -> list[str]:
        cmd = [
            str(paths.tritonserver_bin),
            f"--model-repository={Path(self.model_repository).resolve()}",
            f"--backend-directory={paths.backends_dir}",
            "--model-control-mode=explicit",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--http-address={self.address}",
            f"--grpc-address={self.address}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            # Open client connections otherwise hold shutdown for 30 s; vLLM tiers need ~4 s to stop.
            "--exit-timeout-secs=15",
            # Each python-backend stub talks to the server through a shared-memory region (1 MB by
            # default) that grows under load; in 2.51 growing it under concurrent BLS traffic
            # crashed stubs and the server (segfaults in IPCMessage::LoadFromSharedMemory / the
            # backend's execute), measured: within a minute of routing the router pool at
            # concurrency 4 with 1 MB, 0 errors in 3,297 requests with 64 MB. tmpfs pages are only
            # used when touched, so a large region costs nothing until it is needed.
            f"--backend-config=python,shm-default-byte-size={PYTHON_SHM_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={PYTHON_SHM_BYTES}",
        ]
        cmd += [f"--load-model={name}" for name in self.load_models]
        return cmd + list(self.extra_args)

    def start(self, timeout_s: float = 300.0) -> "TritonServer":
        paths = StackPaths.discover()
        if not paths.tritonserver_bin.exists():
            raise ServerStartError(f"tritonserver not found at {paths.tritonserver_bin}; run `make install`")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(paths),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=paths.server_env(self.env),
            start_new_session=True,  # so stop() can signal the server and its backend stubs together
        )
        log.close()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, route: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{route}", timeout=timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, b""

    def is_ready(self) -> bool:
        return self._get("/v2/health/ready")[0] == 200

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerStartError(
                    f"tritonserver exited with code {self.process.returncode} before it was ready; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if self.is_ready():
                return
            time.sleep(0.5)
        raise ServerStartError(f"tritonserver not ready after {timeout_s:.0f}s; log {self.log_path}:\n{log_tail(self.log_path)}")

    def exit_status(self) -> str | None:
        """How the server process ended ("killed by SIGBUS", "exited with code 1"); None while it runs."""
        code = None if self.process is None else self.process.poll()
        if code is None:
            return None
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"

    def metadata(self) -> dict:
        status, body = self._get("/v2")
        if status != 200:
            raise ServerStartError(f"GET /v2 answered {status}")
        return json.loads(body)

    def stop(self, grace_s: float = 30.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            # SIGTERM to Triton alone lets it unload models (and their stubs) cleanly.
            stop_process_group(proc, grace_s, term_group=False)

    def __enter__(self) -> "TritonServer":
        return self if self.process else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
