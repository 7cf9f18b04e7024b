"""`routenlp calibrate`: the cost-aware utility's lambda and the cascade's conformal thresholds per (task, tier)
-> a new version of the routenlp BLS.

Reads the build's calibration answers (no training: run `routenlp export` first), fits the rules
(export.calibrate), prints per (task, tier) the realised regret with Wilson 95% intervals on
each check pool that has answers (dev, and a split nothing was fitted on if the build has one),
and writes the rules into a new version of the `routenlp` model of the repository.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from routenlp_core.paths import MODEL_REPOSITORY_DIR, RESULTS_DIR


def register(sub) -> None:
    parser = sub.add_parser("calibrate", help="the utility's lambda and conformal escalation thresholds per task and tier; writes a new routenlp BLS version")
    parser.add_argument("--profile", default="default", help="build profile in the portfolio file (tiny, default)")
    parser.add_argument("--portfolio", type=Path, default=None, help="portfolio TOML (default: the embedded one)")
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY_DIR, help="model repository holding the routenlp model")
    parser.add_argument("--alpha", type=float, default=None, help="risk level for every task (default: each task's alpha in the portfolio)")
    parser.add_argument("--check", default="dev,confirm", help="pools to check the rules on (those with answers; default dev,confirm)")
    parser.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "calibration.json", help="JSON copy of the table")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from export.calibrate import PROMISE, CalibrationUnavailable, calibrate_build, check_build, write_calibrated_version
    from export.pipeline import PortfolioBuild
    from export.serving_config_builder import effective_bars
    from routenlp.portfolio import load_portfolio
    from routenlp.table import format_table

    if args.alpha is not None and not 0 < args.alpha < 1:
        print(f"error: --alpha must be in (0, 1), got {args.alpha}", file=sys.stderr)
        return 2
    build = PortfolioBuild(load_portfolio(args.portfolio, profile=args.profile), progress=False)
    try:
        bars = effective_bars(build)
        thresholds, calibration = calibrate_build(build, alpha=args.alpha, bars=bars)
        cells, summaries = check_build(build, thresholds, calibration, [p.strip() for p in args.check.split(",") if p.strip()], bars)
    except (CalibrationUnavailable, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"rules fitted on {build.root / 'answers' / 'calibration.jsonl'}; the promise: {PROMISE}")
    print("regret = mean quality lost by accepting instead of escalating, over the requests reaching the tier; wilson95 = its 95% interval\n")
    print(format_table([cell.as_table_row() for cell in cells]))
    for pool, summary in summaries.items():
        print(f"\n{pool}: system vs always-t4 per task")
        print(format_table([{"task": task, **{k: str(v if not isinstance(v, float) else round(v, 5)) for k, v in row.items()}} for task, row in summary.items()]))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({
        "promise": PROMISE, "alpha": calibration["alpha"], "lambda_fit": calibration.get("lambda_fit"), "bars": bars,
        "rows": [cell.as_table_row() for cell in cells], "systems": summaries, "cells_calibration": calibration["cells"],
    }, indent=2) + "\n")
    print(f"\nwrote {args.results}")
    if args.dry_run:
        return 0
    try:
        version_dir = write_calibrated_version(args.repository, thresholds, calibration)
    except CalibrationUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"wrote {version_dir} (serving_config.json with the new thresholds); a running server picks it up with "
        f"POST /v2/repository/models/routenlp/load"
    )
    return 0
