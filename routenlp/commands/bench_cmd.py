"""`routenlp bench`: RouteNLP and every baseline through the live server; tables, JSON, report.

Starts the deployment on the model repository (or uses a running server with --url), routes the
records of a split (dev by default, or any benchmark JSONL via --data) through each system, and
writes results/main_table.json, results/bench.json, results/report.md and results/plots/.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from routenlp_core.paths import MODEL_REPOSITORY_DIR, RESULTS_DIR


def register(sub) -> None:
    parser = sub.add_parser("bench", help="RouteNLP vs baselines through the live server: table, JSON, report with plots")
    parser.add_argument("--split", default="dev", help="benchmark split to route (default dev)")
    parser.add_argument("--data", type=Path, default=None, help="a benchmark JSONL file instead of a split (records with task, text, target)")
    parser.add_argument("--per-task", type=int, default=100, help="records per task, drawn at random stratified by label (default 100; 0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-task sample")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY_DIR)
    parser.add_argument("--url", default=None, help="gRPC address of a running server (default: start one)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the quality-ratio CI")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--offline", metavar="POOL", default=None, help="no server: every system's cost-quality curve over the build's labelled answers on POOL (e.g. dev), rules calibrated afresh; prints the matched-quality table, writes RESULTS/curves_POOL.json")
    parser.add_argument("--profile", default=None, help="build profile for --offline (default: the repository's)")
    parser.set_defaults(handler=run)


def load_records(args) -> list[dict]:
    from routenlp.data import load_records as read_jsonl
    from routenlp.data import load_split
    from routenlp.data.sampling import stratified_sample
    from routenlp_core.tasks import TASK_NAMES

    if args.data is not None:
        records = read_jsonl(args.data)
        by_task: dict[str, list] = {}
        for record in records:
            by_task.setdefault(record["task"], []).append(record)
    else:
        by_task = {task: load_split(task, args.split) for task in TASK_NAMES}
    return [r for task in sorted(by_task) for r in stratified_sample(by_task[task], args.per_task or None, args.seed)]


def run_offline(args) -> int:
    from clients.bench import offline_curves
    from clients.bench_report import matched_table
    from export.pipeline import PortfolioBuild
    from routenlp.portfolio import load_portfolio
    from routenlp.table import format_table

    build = PortfolioBuild(load_portfolio(profile=args.profile or "default"), progress=False)
    curves = offline_curves(build, args.offline, args.bootstrap)
    print(format_table(matched_table({"curves": curves})))
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"curves_{args.offline}.json"
    path.write_text(json.dumps(curves, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


def run(args) -> int:
    if args.offline:
        return run_offline(args)
    from clients.bench import run_bench
    from clients.bench_report import table_rows, task_rows, write_outputs
    from export.pipeline import PortfolioBuild
    from routenlp.deployment import grpc_url_of, latest_serving_config
    from routenlp.portfolio import load_portfolio
    from routenlp.table import format_table

    try:
        config = latest_serving_config(args.repository)
        records = load_records(args)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    build = PortfolioBuild(load_portfolio(profile=config.profile), progress=False)
    print(f"bench: {len(records)} records, portfolio {config.portfolio}/{config.profile}, repository version {config.repository_version}")
    with grpc_url_of(args.repository, args.url, log=lambda m: print(m, flush=True)) as url:
        bench = run_bench(url, build, config, records, concurrency=args.concurrency, n_boot=args.bootstrap)
    print("\n" + format_table(table_rows(bench)))
    print("\nquality per task (* below the bar):\n" + format_table(task_rows(bench)))
    outputs = write_outputs(bench, args.results, " ".join(["routenlp bench", *(shlex.quote(a) for a in sys.argv[2:])]))
    best = _best_baseline(bench["systems"])
    ours = next(s for s in bench["systems"] if s["name"] == "routenlp")
    oracle = next(s for s in bench["systems"] if s["name"] == "oracle")
    print(
        f"\nRouteNLP: quality ratio {ours['quality_ratio']:.3f}, cost ratio {ours['cost_ratio']:.4f}; best baseline ({best['name']}): "
        f"{best['quality_ratio']:.3f}, {best['cost_ratio']:.4f}; oracle: {oracle['quality_ratio']:.3f}, {oracle['cost_ratio']:.4f}"
    )
    print("wrote " + ", ".join(outputs.values()))
    return 0 if all(s["errors"] == 0 for s in bench["systems"]) else 1


def _best_baseline(systems: list[dict]) -> dict:
    """The baseline with the lowest cost ratio among those at least as good as RouteNLP's quality
    minus 0.02, else the highest-quality baseline."""
    ours = next(s for s in systems if s["name"] == "routenlp")
    others = [s for s in systems if not s["name"].startswith("routenlp") and s["name"] not in ("oracle", "always-t4")]  # ablations are not baselines
    close = [s for s in others if s["quality_ratio"] >= ours["quality_ratio"] - 0.02]
    return min(close, key=lambda s: s["cost_ratio"]) if close else max(others, key=lambda s: s["quality_ratio"])
