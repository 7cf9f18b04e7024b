"""`routenlp data build|stats|convert`: rebuild the committed benchmark from raw data, count it, or
turn one raw official split into benchmark JSONL."""

from __future__ import annotations

import argparse
from pathlib import Path

from routenlp_core.paths import BENCHMARK_DIR, shared_data_dir


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
    convert = verbs.add_parser("convert", help="a raw split (e.g. BANKING77 test.csv) -> benchmark JSONL, all records, no re-splitting")
    convert.add_argument("--task", required=True, help="task whose raw format PATH is in")
    convert.add_argument("--raw", type=Path, required=True, help="raw file or folder in the task's source format")
    convert.add_argument("--out", type=Path, required=True, help="JSONL file to write (outside benchmark/)")
    convert.set_defaults(handler=run_convert)


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



def run_convert(args) -> int:
    from routenlp.data import convert_raw

    try:
        written = convert_raw(args.task, args.raw, args.out)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {written} {args.task} records from {args.raw} to {args.out}")
    return 0
