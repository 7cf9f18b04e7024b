"""One running deployment: the local T4 endpoint (unless T4 is a remote API) and tritonserver on a
model repository, wired together. Used by `routenlp serve`, the demo and the integration tests,
so all of them run the same stack.

The T4 endpoint and Triton start in parallel (each loads a model for up to a minute on CPU).
Triton learns T4's URL, the escalation-log path and whether to keep raw text through its
environment (routenlp_core/serving_config.py, bls_router/escalation_log.py). The repository API
(load/unload) is restricted to holders of the admin key unless `open_admin` is set.

With `openai_port` set, the OpenAI-compatible gateway (gateway/, `python -m gateway`) starts once
Triton is ready, with Triton's environment (T4 URL and key variable, breaker settings), and stops
first.

While Triton runs, a StubSupervisor (routenlp/stub_supervisor.py) reloads any model whose python
backend stub died, since Triton itself never restarts one; it logs to stub_supervisor.log.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bls_router.escalation_log import ENV_LOG_PATH, ENV_LOG_TEXT
from gateway.process import GatewayProcess
from routenlp.processes import say
from routenlp.repository_api import ADMIN_HEADER, RepositoryAPI
from routenlp.stub_supervisor import StubSupervisor
from routenlp.t4_endpoint import T4Endpoint
from routenlp.triton_server import TritonServer
from routenlp_core.contract import BLS_MODEL
from routenlp_core.paths import ESCALATION_LOG_FILE, STATE_DIR
from routenlp_core.serving_config import ENV_T4_BASE_URL, SERVING_CONFIG_FILE, ServingConfig, load_serving_config

ENV_ADMIN_KEY = "ROUTENLP_ADMIN_KEY"


def latest_version_dir(repository: Path) -> Path:
    """The newest `routenlp` version folder that holds a serving config."""
    from export.repository import latest_version

    model_dir = Path(repository) / BLS_MODEL
    version = latest_version(model_dir) if model_dir.is_dir() else 0
    if not version or not (model_dir / str(version) / SERVING_CONFIG_FILE).exists():
        raise FileNotFoundError(f"{model_dir} has no version with {SERVING_CONFIG_FILE}: run `routenlp export` first")
    return model_dir / str(version)


def latest_serving_config(repository: Path) -> ServingConfig:
    """The serving config of the newest `routenlp` version (names the portfolio and profile)."""
    return load_serving_config(latest_version_dir(repository))


def local_t4_checkpoint(config: ServingConfig) -> Path:
    """The trained T4 checkpoint that the local endpoint serves, from the build that wrote the repository."""
    from export.pipeline import PortfolioBuild
    from routenlp.portfolio import load_portfolio

    return PortfolioBuild(load_portfolio(profile=config.profile), progress=False).decoder_dir("t4")


def admin_key(state_dir: Path) -> str:
    """ROUTENLP_ADMIN_KEY, else a random key kept (mode 0600) in the state folder, for `coopt` / `deploy`."""
    key = os.environ.get(ENV_ADMIN_KEY, "").strip()
    if key:
        return key
    path = state_dir / "admin_key"
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    return key


@dataclass
class Deployment:
    repository: Path
    state_dir: Path = STATE_DIR
    local_t4: bool = True  # False: T4 is the URL in t4_url / the portfolio (or none: fallbacks)
    t4_url: str = ""
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)  # http / grpc / metrics; free ports if absent
    open_admin: bool = False  # True: model-control and repository APIs open to any client
    keep_text: bool = False
    escalation_log: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. ROUTENLP_T4_TIMEOUT_S for the BLS
    openai_port: int | None = None  # the OpenAI-compatible gateway's port (0: a free one; None: no gateway)
    server: TritonServer | None = None
    gateway: GatewayProcess | None = None
    t4: T4Endpoint | None = None
    supervisor: StubSupervisor | None = None
    startup_s: float | None = None

    def __post_init__(self) -> None:
        self.repository = Path(self.repository)
        self.state_dir = Path(self.state_dir)
        self.escalation_log = Path(self.escalation_log or self.state_dir / ESCALATION_LOG_FILE)

    def _triton_args(self) -> list[str]:
        args = []
        if not self.open_admin:
            # model-repository = load/unload/index; model-config stays open (perf_analyzer and clients read it)
            restricted = f"model-repository:{ADMIN_HEADER}={admin_key(self.state_dir)}"
            args += [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]
        return args

    def start(self, timeout_s: float = 420.0) -> "Deployment":
        config = latest_serving_config(self.repository)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.extra_env, ENV_LOG_PATH: str(self.escalation_log), ENV_LOG_TEXT: "1" if self.keep_text else "0"}
        if self.local_t4 and not (self.t4_url or config.t4.base_url):
            t4 = config.t4
            self.t4 = T4Endpoint(local_t4_checkpoint(config), self.state_dir / "t4_endpoint.log", served_model_name=t4.model or "t4", api_key_env=t4.api_key_env)
            env[ENV_T4_BASE_URL] = self.t4.base_url
        elif self.t4_url:
            env[ENV_T4_BASE_URL] = self.t4_url
        self.server = TritonServer(self.repository, self.state_dir / "tritonserver.log", env=env, address=self.host, extra_args=self._triton_args(), **{f"{k}_port": v for k, v in self.ports.items()})
        started = time.perf_counter()
        failures: list[BaseException] = []

        def start_t4() -> None:
            try:
                self.t4.start(timeout_s=timeout_s)
            except BaseException as err:  # re-raised in the caller's thread
                failures.append(err)

        thread = threading.Thread(target=start_t4, daemon=True) if self.t4 else None
        try:
            if thread:
                thread.start()
            self.server.start(timeout_s=timeout_s)
            if thread:
                thread.join()
            if failures:
                raise failures[0]
            if self.t4 is not None and env.get(ENV_T4_BASE_URL) != self.t4.base_url:
                # the endpoint lost its picked port and moved; Triton read the old URL at start
                say(self.server.log_path, f"restarting tritonserver: the T4 endpoint moved to {self.t4.base_url}")
                env[ENV_T4_BASE_URL] = self.t4.base_url
                self.server.stop()
                self.server.start(timeout_s=timeout_s)
            if self.openai_port is not None:
                self.gateway = self._start_gateway(env)
        except BaseException:
            if thread:
                thread.join()
            self.stop()
            raise
        self.startup_s = time.perf_counter() - started
        self.supervisor = self._supervise()
        return self

    def _start_gateway(self, env: dict[str, str]) -> GatewayProcess:
        gateway = GatewayProcess(
            self.repository, self.server.grpc_url, self.server.metrics_url, self.state_dir, self.state_dir / "gateway.log",
            host=self.host, port=self.openai_port or 0, env=env,
        )  # fmt: skip
        return gateway.start()

    def gateway_died(self) -> bool:
        return self.gateway is not None and self.gateway.process is not None and self.gateway.process.poll() is not None

    def restart_gateway(self) -> None:
        self.gateway.stop()
        self.gateway.start()

    def repository_api(self):
        """The running server's model-control API with the admin key."""
        return RepositoryAPI(self.server.http_url, "" if self.open_admin else admin_key(self.state_dir))

    def _supervise(self) -> StubSupervisor:
        return StubSupervisor(self.server.process.pid, self.repository_api(), log_path=self.state_dir / "stub_supervisor.log").start()

    def restart_server(self, timeout_s: float = 420.0) -> float:
        """Start tritonserver again, same ports, flags and environment, after it died; the T4
        endpoint keeps running. It loads each model's newest version: the caller pins others.
        Returns the seconds it took to be ready again."""
        assert self.server is not None
        if self.supervisor is not None:
            self.supervisor.stop()
        self.server.stop()  # reaps the dead process and whatever is left of its process group
        if self.supervisor is not None:
            self.supervisor.release_shared_memory()
        started = time.perf_counter()
        self.server.start(timeout_s=timeout_s, keep_ports=True)  # clients hold its URLs
        self.supervisor = self._supervise()
        return time.perf_counter() - started

    def alive(self) -> bool:
        processes = [p for p in (self.server and self.server.process, self.t4 and self.t4.process, self.gateway and self.gateway.process) if p is not None]
        return bool(processes) and all(p.poll() is None for p in processes)

    def stop(self) -> None:
        if self.gateway is not None:  # first: no request should reach a server on its way down
            self.gateway.stop()
        if self.supervisor is not None:  # first, or it would take the shutdown for dead stubs
            self.supervisor.stop()
        if self.server is not None:
            self.server.stop()
        if self.supervisor is not None:  # what a crash before the stop left in /dev/shm
            self.supervisor.release_shared_memory()
        if self.t4 is not None:
            self.t4.stop()

    def describe(self) -> dict[str, str]:
        assert self.server is not None
        return {
            "gRPC": self.server.grpc_url,
            "HTTP": f"http://{self.server.http_url}",
            "metrics": self.server.metrics_url,
            "OpenAI API": self.gateway.base_url if self.gateway else "off",
            "T4": self.t4.base_url if self.t4 else (self.t4_url or "portfolio base_url / none"),
            "escalation log": str(self.escalation_log),
            "logs": str(self.state_dir),
            "repository API": "open" if self.open_admin else f"restricted: send header '{ADMIN_HEADER}' ({ENV_ADMIN_KEY} or {self.state_dir / 'admin_key'})",
        }

    def __enter__(self) -> "Deployment":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def grpc_url_of(repository: Path, url: str | None = None, log: Callable[[str], None] = print) -> Iterator[str]:
    """The gRPC address to send requests to: `url` (a server already running), else a
    Deployment of `repository` started for the block and stopped after it."""
    if url:
        yield url
        return
    with Deployment(repository) as deployment:
        log(f"deployment ready in {deployment.startup_s:.0f} s (gRPC {deployment.server.grpc_url})")
        yield deployment.server.grpc_url

