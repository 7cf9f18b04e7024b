"""`routenlp serve`: run the deployment (local T4 endpoint + tritonserver) until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from routenlp_core.paths import MODEL_REPOSITORY_DIR

STANDARD_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's defaults
OPENAI_PORT = 8080
VERSION_POLL_S = 10.0  # how often the live model versions are recorded (restored after a crash)


def register(sub) -> None:
    parser = sub.add_parser("serve", help="start tritonserver (and the local T4 endpoint) on the model repository")
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY_DIR, help="model repository written by `routenlp export`")
    parser.add_argument("--host", default="127.0.0.1", help="address Triton listens on (0.0.0.0 for other machines)")
    for name, port in STANDARD_PORTS.items():
        parser.add_argument(f"--{name}-port", type=int, default=port, help=f"{name} port (default {port}; 0 picks a free one)")
    openai = parser.add_mutually_exclusive_group()
    openai.add_argument(
        "--openai-port", type=int, default=OPENAI_PORT,
        help=f"port of the OpenAI-compatible gateway (default {OPENAI_PORT}; 0 picks a free one); tenants from <state-dir>/tenants.toml or ROUTENLP_TENANTS",
    )  # fmt: skip
    openai.add_argument("--no-openai", action="store_true", help="do not start the OpenAI-compatible gateway")
    t4 = parser.add_mutually_exclusive_group()
    t4.add_argument("--t4-url", default="", help="OpenAI-compatible T4 base URL instead of the local endpoint")
    t4.add_argument("--no-t4", action="store_true", help="no T4 endpoint: requests that need T4 fall back to T3")
    parser.add_argument("--state-dir", type=Path, default=None, help="logs, escalation log and admin key (default var/)")
    parser.add_argument("--open-admin", action="store_true", help="leave the model-control / repository APIs unrestricted")
    parser.add_argument("--log-text", action="store_true", help="keep raw request text and answers in the escalation log")
    parser.add_argument(
        "--max-restarts", type=int, default=5,
        help="restart a crashed tritonserver up to this many times per 10 minutes (0: exit instead)",
    )  # fmt: skip
    parser.set_defaults(handler=run)


def _raise_interrupt(signum, frame):  # SIGTERM stops like Ctrl-C: through the same cleanup
    raise KeyboardInterrupt


def run(args) -> int:
    from routenlp.deployment import STATE_DIR, Deployment
    from routenlp.processes import log_tail
    from routenlp.server_restarts import RestartBudget, ServerRestarter
    from routenlp.table import format_table

    ports = {name: getattr(args, f"{name}_port") for name in STANDARD_PORTS if getattr(args, f"{name}_port")}
    deployment = Deployment(
        args.repository, state_dir=args.state_dir or STATE_DIR, local_t4=not (args.no_t4 or args.t4_url), t4_url=args.t4_url,
        host=args.host, ports=ports, open_admin=args.open_admin, keep_text=args.log_text,
        openai_port=None if args.no_openai else args.openai_port,
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    print(f"starting tritonserver on {args.repository}" + " (vLLM engines load in about a minute each) ...", flush=True)
    try:
        deployment.start()
    except KeyboardInterrupt:
        print("interrupted during start-up; stopped", file=sys.stderr)
        return 130
    except (FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        print(f"ready in {deployment.startup_s:.0f} s")
        print(format_table([{"endpoint": k, "value": v} for k, v in deployment.describe().items()]))
        print("Ctrl-C or SIGTERM stops everything.", flush=True)
        restarter = ServerRestarter(deployment, RestartBudget(max_restarts=args.max_restarts), log=lambda line: print(line, flush=True))
        watched = 0.0
        while True:
            if deployment.alive():
                if time.monotonic() - watched > VERSION_POLL_S:
                    restarter.record_live_versions()
                    watched = time.monotonic()
                time.sleep(1.0)
                continue
            if deployment.gateway_died() and deployment.server.process.poll() is None:
                print(f"the OpenAI gateway exited; restarting it (log {deployment.gateway.log_path})", flush=True)
                deployment.restart_gateway()
                continue
            t4_dead = deployment.t4 is not None and deployment.t4.process.poll() is not None
            if t4_dead or not restarter.restart():
                break
        server_log = deployment.server.log_path if deployment.server else None
        print(f"error: a server process exited unexpectedly; see {deployment.state_dir}", file=sys.stderr)
        if server_log:
            print(log_tail(server_log), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        deployment.stop()
        print("stopped", flush=True)
