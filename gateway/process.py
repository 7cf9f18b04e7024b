"""Start and stop the gateway as its own process (`python -m gateway`), like the other servers of
a Deployment: own process group, readiness wait on GET /health/ready that fails fast with the
log tail, SIGTERM (uvicorn drains) then SIGKILL on stop."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from routenlp.processes import free_port, start_on_one_port, stop_process_group, wait_until_ready


class GatewayStartError(RuntimeError):
    """The gateway exited or did not become ready; the message carries the end of its log."""


@dataclass
class GatewayProcess:
    repository: Path
    grpc_url: str
    metrics_url: str
    state_dir: Path
    log_path: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    env: Mapping[str, str] | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    port_retries: list[str] = field(default_factory=list, init=False)  # one note per start on a fresh port

    def __post_init__(self) -> None:
        self.picked = () if self.port else ("port",)
        self.port = self.port or free_port()

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (what `OpenAI(base_url=...)` takes)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "gateway", "--repository", str(Path(self.repository).resolve()), "--grpc-url", self.grpc_url,
            "--metrics-url", self.metrics_url, "--state-dir", str(Path(self.state_dir).resolve()), "--host", self.host, "--port", str(self.port),
        ]  # fmt: skip

    def start(self, timeout_s: float = 60.0) -> "GatewayProcess":
        """Start and wait until ready; a picked port another process took first is picked afresh."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        start_on_one_port(self, lambda: self._start_once(timeout_s), "gateway")
        return self

    def _start_once(self, timeout_s: float) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(self.env) if self.env else None, start_new_session=True)
        try:
            wait_until_ready(
                self.process, self.is_ready, timeout_s, what="gateway", log_path=self.log_path, error=GatewayStartError,
                poll_s=0.3, ports=[self.port],
            )  # fmt: skip
        except BaseException:  # Ctrl-C included: no orphan process
            self.stop()
            raise

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health/ready", timeout=2.0) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self, grace_s: float = 15.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_process_group(proc, grace_s, term_group=False)
