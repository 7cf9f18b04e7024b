"""`routenlp demo`: the main job on the embedded default portfolio.

Takes the default portfolio from its committed pack (packs/, export/pack.py) when the pack matches
the portfolio and profile, else builds it (or takes it from the step cache); writes its model
repository, starts the deployment (local T4 endpoint + tritonserver), and routes the dev split of all six tasks through
the `routenlp` entry model over gRPC twice: with RouteNLP's routing and with the Always-T4 policy
(same server, same models). Prints the routing mix, quality ratio and cost ratio vs Always-T4 and
p50/p99 latency, and writes results/demo.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from routenlp.table import format_table
from routenlp_core.paths import MODEL_REPOSITORY_DIR, RESULTS_DIR

REFERENCE_POLICY = "always-t4"


def register(sub) -> None:
    parser = sub.add_parser("demo", help="serve the default portfolio (its committed pack, or built here) on Triton, route the dev split")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--per-task", type=int, default=None, help="dev requests per task (default: the whole dev split)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--results", default=str(RESULTS_DIR / "demo.json"))
    parser.add_argument("--rebuild", action="store_true", help="train the portfolio here even when the committed pack matches it")
    parser.set_defaults(handler=run)


def _records(per_task: int | None) -> list[dict]:
    from routenlp.data import load_split
    from routenlp_core.tasks import TASK_NAMES

    records = []
    for task in TASK_NAMES:
        records += load_split(task, "dev")[:per_task]
    return records


def _ratio(value: float | None) -> str:
    return "n/a (every reference request failed)" if value is None else f"{value:.3f}"


def summary_rows(systems: dict[str, dict], reference: str) -> list[dict[str, str]]:
    from clients.served_eval import compare

    rows = []
    for name, summary in systems.items():
        ratios = compare(summary, systems[reference])
        rows.append({
            "system": name,
            "requests": str(summary["requests"]),
            "errors": str(summary["errors"]),
            "mean quality": f"{summary['mean_quality']:.4f}",
            "quality ratio": _ratio(ratios["quality_ratio"]),
            "cost $": f"{summary['dollars']:.4f}",
            "cost ratio": _ratio(ratios["cost_ratio"]),
            "p50 ms": f"{summary['p50_ms']:.1f}",
            "p99 ms": f"{summary['p99_ms']:.1f}",
            "escalated": f"{summary['escalation_rate']:.3f}",
            "mix t1/t2/t3/t4": "/".join(f"{summary['mix'].get(t, 0):.2f}" for t in ("t1", "t2", "t3", "t4")),
        })  # fmt: skip
    return rows


def task_rows(systems: dict[str, dict], bars: dict[str, float]) -> list[dict[str, str]]:
    first = next(iter(systems.values()))
    rows = []
    for task in first["quality"]:
        row = {"task": task, "bar": f"{bars.get(task, float('nan')):.3f}"}
        row.update({name: f"{s['quality'][task]:.3f}" for name, s in systems.items()})
        row["routenlp mix t1/t2/t3/t4"] = "/".join(str(n) for n in first["mix_by_task"][task].values())
        rows.append(row)
    return rows


def run(args) -> int:
    from clients.served_eval import compare, route_records, service_times, summarize
    from routenlp.commands import export_cmd
    from routenlp.deployment import Deployment, latest_serving_config
    from routenlp.server_restarts import ServerRestarter

    export_cmd.run(argparse.Namespace(
        profile=args.profile, portfolio=None, repository=None, target="cpu", results=export_cmd.report_path(args.profile), quiet=True,
        write_pack=False, from_pack=not args.rebuild, pack=None,
    ))  # fmt: skip
    records = _records(args.per_task)
    print("\nstarting the deployment (T4 endpoint + tritonserver; vLLM engines load in about a minute each) ...", flush=True)
    with Deployment(MODEL_REPOSITORY_DIR, ports={}) as deployment:
        print(format_table([{"endpoint": k, "value": v} for k, v in deployment.describe().items()]), flush=True)
        url = deployment.server.grpc_url
        route_records(url, records[:8], "routenlp", concurrency=2, progress=False)  # warm-up: first vLLM steps are slow
        restarter = ServerRestarter(deployment)
        restarter.record_live_versions()
        systems, seconds, service_ms = {}, {}, {}
        for policy in ("routenlp", REFERENCE_POLICY):
            started = time.perf_counter()
            while True:  # a pass the server died in is routed again once it is back (same ports)
                answers = route_records(url, records, policy, concurrency=args.concurrency, desc=f"route dev ({policy})")
                failed = sum(a.error is not None for a in answers)
                if not failed or deployment.server.exit_status() is None or not restarter.restart():
                    break
                print(f"{policy}: {failed} of {len(answers)} requests failed when tritonserver died; routing the pass again", flush=True)
            seconds[policy] = round(time.perf_counter() - started, 1)
            systems[policy] = summarize(answers)
            for tier, samples in service_times(answers).items():
                service_ms.setdefault(tier, []).extend(samples)
            print(f"{policy}: {len(answers)} requests in {seconds[policy]:.0f} s", flush=True)
        bars = dict(latest_serving_config(MODEL_REPOSITORY_DIR).bars)
    print(f"\nDev split of all six tasks through Triton over gRPC ({len(records)} requests per system, concurrency {args.concurrency}):")
    print(format_table(summary_rows(systems, REFERENCE_POLICY)))
    print("\nquality per task (task metric; bar = the router's effective bar):")
    print(format_table(task_rows(systems, bars)))
    ratios = compare(systems["routenlp"], systems[REFERENCE_POLICY])
    print(
        f"\nRouteNLP vs Always-T4: quality ratio {_ratio(ratios['quality_ratio'])}, cost ratio {_ratio(ratios['cost_ratio'])}; "
        f"p50 {systems['routenlp']['p50_ms']:.0f} ms, p99 {systems['routenlp']['p99_ms']:.0f} ms"
    )
    # a T4 endpoint that timed out falls back (counted, never silent), but then the reference is
    # no longer Always-T4 and the ratios against it do not mean what the table says
    reference_fallback = round(1.0 - systems[REFERENCE_POLICY]["mix"].get("t4", 0.0), 4)
    if reference_fallback > 0.01:
        print(f"WARNING: {reference_fallback:.0%} of the Always-T4 requests were answered by a fallback tier (T4 endpoint slow or "
              "down: see the escalation log); the ratios above compare against that mix, not against T4", flush=True)
    out = {
        "records": len(records), "concurrency": args.concurrency, "seconds": seconds, "systems": systems, "ratios_vs_always_t4": ratios, "bars": bars,
        "reference_fallback_share": reference_fallback,
        # for `routenlp capacity`: RouteNLP's tier mix and per-tier service times measured in the BLS
        "mix": systems["routenlp"]["mix"], "service_ms": service_ms,
        "server_restarts": restarter.history,  # tritonserver crashes survived (README, Reliability)
    }  # fmt: skip
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(out, handle, indent=2, sort_keys=True)
        handle.write("\n")
    print(f"wrote {path}; escalation log: {deployment.escalation_log} (`routenlp log tail`)")
    return 0 if all(s["errors"] == 0 for s in systems.values()) else 1
