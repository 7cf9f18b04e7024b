"""`routenlp demo`: the main job on the embedded default portfolio.

Builds (or takes from the step cache) the default portfolio and its model repository, starts the
local T4 endpoint and tritonserver, and routes dev requests of every task through the `routenlp`
entry model over gRPC, printing where each went, what it cost and how long it took.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from routenlp.paths import MODEL_REPOSITORY_DIR, RESULTS_DIR
from routenlp.table import format_table


def register(sub) -> None:
    parser = sub.add_parser("demo", help="build the default portfolio, serve it on Triton, route dev requests")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--per-task", type=int, default=5, help="dev requests routed per task")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from clients.route_client import RouteClient
    from routenlp.commands import export_cmd
    from routenlp.data import load_split
    from routenlp.portfolio import load_portfolio
    from routenlp.t4_endpoint import T4Endpoint
    from routenlp.tasks import TASK_NAMES
    from routenlp.triton_server import TritonServer
    from export.pipeline import PortfolioBuild

    export_cmd.run(argparse.Namespace(profile=args.profile, portfolio=None, repository=None, target="cpu", results=RESULTS_DIR / "portfolio.json", quiet=True))
    build = PortfolioBuild(load_portfolio(profile=args.profile), progress=False)
    t4 = build.portfolio.tiers["t4"]
    print("\nstarting the local T4 endpoint and tritonserver (vLLM engines load in about a minute each) ...")
    with T4Endpoint(build.decoder_dir("t4"), RESULTS_DIR / "demo_t4.log", api_key_env=t4.api_key_env) as endpoint:
        env = {**os.environ, "ROUTENLP_T4_BASE_URL": endpoint.base_url}
        with TritonServer(MODEL_REPOSITORY_DIR, RESULTS_DIR / "demo_tritonserver.log", env=env) as server:
            print(f"Triton {server.metadata()['version']} ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}")
            client = RouteClient(server.grpc_url)
            rows = []
            for task in TASK_NAMES:
                for record in load_split(task, "dev")[: args.per_task]:
                    started = time.perf_counter()
                    answer = client.route(record["text"], task, request_id=f"demo-{record['id']}")
                    meta = answer.metadata
                    rows.append({
                        "task": task,
                        "path": ">".join(meta["path"]),
                        "cost_usd": f"{meta['cost_usd']:.6f}",
                        "latency_ms": f"{(time.perf_counter() - started) * 1e3:.1f}",
                        "fallback": meta.get("fallback") or "",
                        "answer": answer.output[:40].replace("\n", " "),
                    })
            client.close()
    print(format_table(rows))
    latencies = sorted(float(r["latency_ms"]) for r in rows)
    print(f"\n{len(rows)} requests; p50 {statistics.median(latencies):.1f} ms, max {latencies[-1]:.1f} ms")
    return 0
