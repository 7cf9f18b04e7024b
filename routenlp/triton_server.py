"""Start and stop a real tritonserver process: free ports, readiness wait, clean shutdown.

Ports left at 0 are picked here, and picked afresh when another process takes one before Triton
binds it (routenlp/processes.py: the port race; `port_retries` says what happened).

Used by `routenlp serve`, `routenlp doctor`, the demo and the integration tests alike, so all of
them run the server the same way.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from routenlp.processes import (
    free_port,
    how_it_ended,
    repick,
    start_with_port_retry,
    stop_process_group,
    wait_until_ready,
)
from routenlp.stack import StackPaths

PYTHON_SHM_BYTES = 64 * 1024 * 1024  # per python-backend stub (see TritonServer.command)
PORT_NAMES = ("http", "grpc", "metrics")


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
    http_port: int = 0  # 0: picked here, and picked again if another process takes it first
    grpc_port: int = 0
    metrics_port: int = 0
    process: subprocess.Popen | None = None
    picked: tuple[str, ...] = field(default=(), init=False)  # the port names chosen here, not given
    port_retries: list[str] = field(default_factory=list, init=False)  # one note per start on fresh ports

    def __post_init__(self) -> None:
        self.picked = tuple(name for name in PORT_NAMES if not getattr(self, f"{name}_port"))
        self._set_ports({name: getattr(self, f"{name}_port") or free_port() for name in PORT_NAMES})

    @property
    def ports(self) -> dict[str, int]:
        return {name: getattr(self, f"{name}_port") for name in PORT_NAMES}

    def _set_ports(self, ports: dict[str, int]) -> None:
        for name, port in ports.items():
            setattr(self, f"{name}_port", port)

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

    def start(self, timeout_s: float = 300.0, keep_ports: bool = False) -> "TritonServer":
        """Start and wait until ready. A port it picked that another process took first is picked
        afresh (up to processes.PORT_ATTEMPTS starts) unless keep_ports (a restart: clients hold
        the URLs), which then fails saying which port is held."""
        paths = StackPaths.discover()
        if not paths.tritonserver_bin.exists():
            raise ServerStartError(f"tritonserver not found at {paths.tritonserver_bin}; run `make install`")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

        def fresh_ports(taken: str) -> list[int] | None:
            ports = repick(self.ports, () if keep_ports else self.picked, taken)
            if ports is not None:
                self._set_ports(ports)
            return ports and list(ports.values())

        self.port_retries += start_with_port_retry(
            lambda: self._start_once(paths, timeout_s), fresh_ports, what="tritonserver", log_path=self.log_path,
            ports=lambda: list(self.ports.values()),
        )  # fmt: skip
        return self

    def _start_once(self, paths: StackPaths, timeout_s: float) -> None:
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
            wait_until_ready(
                self.process, self.is_ready, timeout_s, what="tritonserver", log_path=self.log_path,
                error=ServerStartError, ports=list(self.ports.values()),
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise

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

    def exit_status(self) -> str | None:
        """How the server process ended ("killed by SIGBUS", "exited with code 1"); None while it runs."""
        code = None if self.process is None else self.process.poll()
        if code is None:
            return None
        return how_it_ended(code)

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
