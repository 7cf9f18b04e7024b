"""`routenlp perf`: perf_analyzer against the routed entry model and the Always-T4 policy in the
same run, concurrency 1..16, plus the routing overhead on T1; prints tables, writes results/perf.json."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from routenlp_core.paths import MODEL_REPOSITORY_DIR, RESULTS_DIR


def register(sub) -> None:
    parser = sub.add_parser("perf", help="perf_analyzer: routed vs Always-T4 side by side, and the routing overhead")
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated concurrency levels")
    parser.add_argument("--per-task", type=int, default=20, help="dev records per task in the input data")
    parser.add_argument("--measurement-ms", type=int, default=6000)
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY_DIR)
    parser.add_argument("--url", default=None, help="gRPC address of a running server (default: start one)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "perf.json")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from clients.perf import PerfAnalyzerError
    from clients.perf_compare import compare_policies, routing_overhead
    from routenlp.data import load_split
    from routenlp.deployment import grpc_url_of, latest_serving_config
    from routenlp.table import format_table
    from routenlp_core.tasks import TASK_NAMES

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    config = latest_serving_config(args.repository)
    records = [r for task in TASK_NAMES for r in load_split(task, "dev")[: args.per_task]]
    from transformers import PreTrainedTokenizerFast

    from export.repository import latest_version
    from routenlp_core.contract import BLS_MODEL
    from routenlp_core.serving_config import TOKENIZER_DIR

    bls_dir = args.repository / BLS_MODEL
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(bls_dir / str(latest_version(bls_dir)) / TOKENIZER_DIR))
    t1_len = config.t1["legal_risk"].max_len

    def measure(url: str) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"perf_analyzer over gRPC, {len(records)} dev requests as input data, concurrency {levels}")
            policies = compare_policies(url, records, Path(tmp), levels, args.measurement_ms)
            overhead = routing_overhead(url, records, tokenizer, t1_len, Path(tmp), [1, 4], args.measurement_ms)
        return {"policies": policies, "overhead": overhead}

    try:
        with grpc_url_of(args.repository, args.url) as url:
            out = measure(url)
    except PerfAnalyzerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\nrouted (routenlp) vs Always-T4, same server, back to back:")
    print(format_table(out["policies"]))
    print("\nrouting overhead: routenlp with MAX_TIER t1 vs direct t1_legal_risk calls:")
    print(format_table(out["overhead"]))
    out.update(records=len(records), measurement_ms=args.measurement_ms, repository_version=config.repository_version)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.results}")
    return 0
