"""`routenlp perf`: a benchmark (not a timed test) of the routing hot path, over gRPC with perf_analyzer.

In one run: routed-on-T1 (the entry model with MAX_TIER t1 on legal_risk) against direct calls to
t1_legal_risk at each concurrency, interleaved round by round, with the added p50/p95/p99 and
the throughput ratio, and where the routed requests' time went (the BLS's stage counters and
Triton's per-model statistics). `--policies` also runs routed vs the Always-T4 policy (needs the
whole deployment: vLLM tiers and the T4 endpoint). Writes results/perf.json with the command.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from routenlp_core.paths import MODEL_REPOSITORY_DIR, RESULTS_DIR

# What routed-on-T1 needs: the entry model, the router and the T1 heads (no decoders, no T4).
HOT_PATH_MODELS = ("router", "t1_cs_intent", "t1_fin_ner", "t1_legal_clause", "t1_legal_risk", "routenlp")


def register(sub) -> None:
    what = "perf_analyzer: routed-on-T1 vs direct T1 (added latency, throughput ratio, breakdown)"
    parser = sub.add_parser("perf", help=what)
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved routed/direct pairs per concurrency")
    parser.add_argument("--per-task", type=int, default=20, help="dev records per task in the input data")
    parser.add_argument("--measurement-ms", type=int, default=3000)
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY_DIR)
    parser.add_argument("--url", default=None, help="gRPC address of a running server (default: start one)")
    parser.add_argument("--http-url", default=None, help="with --url: its HTTP address (per-model statistics)")
    parser.add_argument("--metrics-url", default=None, help="with --url: its /metrics URL (the BLS's stage counters)")
    parser.add_argument("--policies", action="store_true", help="also routed vs Always-T4 (the whole deployment)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "perf.json")
    parser.set_defaults(handler=run)


@contextlib.contextmanager
def _server(args) -> Iterator[tuple[str, str | None, str | None, int | None]]:
    """(grpc, http, metrics addresses, the server's pid or None): the running server named, else
    one started for the run."""
    if args.url:
        yield args.url, args.http_url, args.metrics_url, None
        return
    if args.policies:
        from routenlp.deployment import Deployment

        with Deployment(args.repository) as deployment:
            server = deployment.server
            yield server.grpc_url, server.http_url, server.metrics_url, server.process.pid
        return
    import os

    from bls_router.escalation_log import ENV_LOG_PATH
    from routenlp.triton_server import TritonServer

    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, ENV_LOG_PATH: str(Path(state) / "escalation_log.sqlite")}
        server = TritonServer(args.repository, Path(state) / "tritonserver.log", load_models=HOT_PATH_MODELS, env=env)
        with server:
            yield server.grpc_url, server.http_url, server.metrics_url, server.process.pid


def breakdown_rows(overhead: list[dict]) -> list[dict]:
    """One row per BLS stage (and per Triton model phase, and per process's CPU on either side):
    microseconds per routed request at each concurrency."""
    rows: dict[str, dict] = {}
    for row in overhead:
        c = f"c={row['concurrency']} us"
        detail = row.get("breakdown") or {}
        for stage, us in (detail.get("bls_stages_us") or {}).items():
            rows.setdefault(f"BLS {stage}", {"where": f"BLS {stage}"})[c] = us
        for model, stats in (detail.get("triton_models") or {}).items():
            for phase in ("queue_us", "compute_infer_us"):
                key = f"{model} {phase[:-3]}"
                rows.setdefault(key, {"where": key})[c] = stats.get(phase)
            rows.setdefault(f"{model} requests/execution", {"where": f"{model} requests/execution"})[c] = (
                round(stats["requests"] / stats["executions"], 2) if stats.get("executions") else None
            )
        for side, processes in (row.get("cpu_us_per_request") or {}).items():
            for process, us in processes.items():
                key = f"CPU {side} {process}"
                rows.setdefault(key, {"where": key})[c] = us
    return list(rows.values())


def run(args) -> int:
    from transformers import PreTrainedTokenizerFast

    from clients.perf import PerfAnalyzerError
    from clients.perf_breakdown import BreakdownProbe
    from clients.perf_compare import OVERHEAD_TASK, compare_policies, routing_overhead
    from clients.perf_cpu import CpuProbe
    from routenlp.data import load_split
    from routenlp.deployment import latest_serving_config, latest_version_dir
    from routenlp.table import format_table
    from routenlp_core.serving_config import TOKENIZER_DIR
    from routenlp_core.tasks import TASK_NAMES

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    config = latest_serving_config(args.repository)
    records = [r for task in TASK_NAMES for r in load_split(task, "dev")[: args.per_task]]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(latest_version_dir(args.repository) / TOKENIZER_DIR))
    out: dict = {"command": "routenlp perf " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["perf"] else "routenlp perf"}
    try:
        with _server(args) as (url, http_url, metrics_url, server_pid), tempfile.TemporaryDirectory() as tmp:
            models = ["routenlp", "router", f"t1_{OVERHEAD_TASK}"]
            probe = BreakdownProbe(metrics_url, http_url, models) if http_url and metrics_url else None
            cpu = CpuProbe(http_url, server_pid) if http_url and server_pid else None  # a server on this machine
            print(
                f"perf_analyzer over gRPC ({url}): routed-on-T1 vs direct t1_{OVERHEAD_TASK}, "
                f"{args.rounds} interleaved rounds per concurrency {levels}"
            )
            max_len = config.t1[OVERHEAD_TASK].max_len
            out["overhead"] = routing_overhead(
                url, records, tokenizer, max_len, Path(tmp), levels, args.measurement_ms, rounds=args.rounds, probe=probe, cpu=cpu
            )
            if args.policies:
                out["policies"] = compare_policies(url, records, Path(tmp), levels, args.measurement_ms)
    except PerfAnalyzerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    columns = ["concurrency", "routed_t1_p50_ms", "direct_t1_p50_ms", "added_p50_ms", "added_p95_ms", "added_p99_ms",
               "routed_t1_throughput", "direct_t1_throughput", "throughput_ratio"]  # fmt: skip
    print("\nrouted-on-T1 (routenlp, MAX_TIER t1) vs direct t1 calls, medians over interleaved rounds:")
    print(format_table(out["overhead"], columns))
    out["breakdown_table"] = breakdown_rows(out["overhead"])
    if out["breakdown_table"]:
        print("\nwhere a routed request's time goes (microseconds per request; BLS stages, then Triton per model):")
        print(format_table(out["breakdown_table"]))
    if "policies" in out:
        print("\nrouted (routenlp) vs Always-T4, same server, back to back:")
        print(format_table(out["policies"]))
    out.update(
        records=len([r for r in records if r["task"] == OVERHEAD_TASK]), measurement_ms=args.measurement_ms,
        rounds=args.rounds, repository_version=config.repository_version, profile=config.profile,
    )  # fmt: skip
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.results}")
    return 0
