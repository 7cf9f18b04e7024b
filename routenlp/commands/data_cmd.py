"""`routenlp data build|stats`: rebuild the committed benchmark from raw data, or count it."""

from __future__ import annotations

import argparse
from pathlib import Path

from routenlp.paths import BENCHMARK_DIR, shared_data_dir


def register(sub) -> None:
    parser = sub.add_parser("data", help="build or inspect the six-task benchmark")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    build = verbs.add_parser("build", help="rebuild benchmark/ from the raw datasets (fixed seed)")
    build.add_argument("--raw", type=Path, default=None, help="raw data folder (default ../shared/data)")
    build.add_argument("--out", type=Path, default=BENCHMARK_DIR)
    build.add_argument("--seed", type=int, default=13)
    build.set_defaults(handler=run_build)
    stats = verbs.add_parser("stats", help="records per task and split")
    stats.add_argument("--bench", type=Path, default=BENCHMARK_DIR)
    stats.set_defaults(handler=run_stats)


def run_build(args) -> int:
    from routenlp.data import build_benchmark

    raw = args.raw or shared_data_dir()
    if not raw.exists():
        raise SystemExit(f"raw data folder {raw} not found; pass --raw DIR (the committed benchmark/ already works without it)")
    build_benchmark(raw, args.out, seed=args.seed)
    return run_stats(argparse.Namespace(bench=args.out))


def run_stats(args) -> int:
    from routenlp.data import benchmark_stats, format_stats_table

    print(format_stats_table(benchmark_stats(args.bench)))
    return 0

