"""What `routenlp serve`, the demo and `routenlp coopt` do when tritonserver itself dies: start it
again, serving the versions that were live, and say so (the one restart path).

Why: Triton 2.51's python backend can take the whole server down under sustained BLS traffic
(SIGSEGV or an uncaught boost::interprocess::lock_exception inside TRITONBACKEND_ModelInstanceExecute,
measured here on the default portfolio at concurrency 4; the same crash is reported upstream for
2.55, triton-inference-server/server#8882). Requests in flight at that moment get a transport error
(never a silent loss: nothing answered is missing from the escalation log, see
tests/integration/test_reliability.py); what a production server must not do is stay down.

A restarted server loads each model's newest version, which is not what was live after
`routenlp deploy --version N` (a rollback), so the versions seen live are recorded while the server
runs and pinned back after the restart: tier models first, the routing BLS last. Restarts are
bounded (`max_restarts` within `window_s`) so a server that crashes at start-up is not restarted
forever; every restart is appended to server_restarts.jsonl in the state folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routenlp.repository_api import live_versions, restore_versions

RESTARTS_FILE = "server_restarts.jsonl"


@dataclass
class RestartBudget:
    """At most `max_restarts` restarts within any `window_s` seconds."""

    max_restarts: int = 5
    window_s: float = 600.0
    times: list[float] = field(default_factory=list)

    def allow(self, now: float) -> bool:
        self.times = [t for t in self.times if now - t < self.window_s]
        return len(self.times) < self.max_restarts

    def record(self, now: float) -> None:
        self.times.append(now)


def append_restart(state_dir: Path, record: Mapping[str, Any]) -> None:
    with open(Path(state_dir) / RESTARTS_FILE, "a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


class ServerRestarter:
    """Restarts a Deployment's dead tritonserver and pins back the versions recorded before."""

    def __init__(self, deployment, budget: RestartBudget | None = None, log: Callable[[str], None] = print) -> None:
        self.deployment = deployment
        self.budget = budget or RestartBudget()
        self.log = log
        self.recorded: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []  # one record per restart, as in server_restarts.jsonl

    def record_live_versions(self) -> None:
        """Called while the server runs; a failed probe keeps the last record."""
        try:
            api = self.deployment.repository_api()
            live = live_versions(api, sorted({row["name"] for row in api.index() if "name" in row}))
        except Exception:  # a server going down mid-probe: the previous record stands
            return
        if live:
            self.recorded = live

    def restart(self) -> bool:
        """False when the budget is spent (the caller stops). Otherwise restarts and restores."""
        now = time.time()
        ended = self.deployment.server.exit_status() or "stopped answering"
        if not self.budget.allow(now):
            self.log(f"tritonserver died ({ended}); {self.budget.max_restarts} restarts within {self.budget.window_s:.0f} s already, giving up")
            return False
        self.budget.record(now)
        self.log(f"tritonserver died ({ended}); restarting it (same ports, flags and environment)")
        try:
            restart_s = self.deployment.restart_server()
        except RuntimeError as err:  # not ready in time: the caller sees it dead and tries again
            self.log(f"tritonserver did not come back: {err}")
            self.history.append({"at": now, "ended": ended, "error": str(err)[:500]})
            append_restart(self.deployment.state_dir, self.history[-1])
            return True
        restored, pin_error = [], None
        try:
            restored = restore_versions(self.deployment.repository_api(), self.recorded, self.deployment.repository)
        except Exception as err:  # keep serving the newest versions rather than nothing
            pin_error = f"{type(err).__name__}: {err}"
            self.log(f"could not pin the versions live before the crash back ({pin_error}); serving the newest")
        record = {"at": now, "ended": ended, "restart_s": round(restart_s, 1), "restored": dict(restored), "pin_error": pin_error}
        self.history.append(record)
        append_restart(self.deployment.state_dir, record)
        pinned = ", ".join(f"{m} v{v}" for m, v in restored) or "nothing to pin back"
        self.log(f"tritonserver ready again after {restart_s:.0f} s (restart {len(self.history)}; {pinned})")
        return True

    def restart_or_raise(self) -> float:
        """restart() for a caller that cannot go on without the server (the coopt loop, which pins
        its own version after): the seconds the restart took; raises when there was none."""
        if not self.restart() or "error" in self.history[-1]:
            last = self.history[-1].get("error", "restart budget spent") if self.history else "restart budget spent"
            raise RuntimeError(f"tritonserver is down and was not restarted: {last}")
        return self.history[-1]["restart_s"]
