"""`routenlp calibrate`: conformal thresholds per (task, tier) -> a new version of the routenlp BLS.

Reads the build's calibration answers (no training: run `routenlp export` first), computes
delta[task][tier] at level alpha, prints the empirical violation on the dev pool with Wilson 95%
intervals, and writes the thresholds into a new version of the `routenlp` model of the repository.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from routenlp.paths import MODEL_REPOSITORY_DIR, RESULTS_DIR


def register(sub) -> None:
    parser = sub.add_parser("calibrate", help="conformal escalation thresholds per task and tier; writes a new routenlp BLS version")
    parser.add_argument("--profile", default="default", help="build profile in the portfolio file (tiny, default)")
    parser.add_argument("--portfolio", type=Path, default=None, help="portfolio TOML (default: the embedded one)")
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY_DIR, help="model repository holding the routenlp model")
    parser.add_argument("--alpha", type=float, default=0.05, help="risk level: Pr[wrong and accepted] target (default 0.05)")
    parser.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "calibration.json", help="JSON copy of the table")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from bls_router.calibrate import CalibrationUnavailable, calibrate_build, check_on, write_calibrated_version
    from bls_router.serving_config import effective_bars
    from export.pipeline import PortfolioBuild
    from routenlp.portfolio import load_portfolio
    from routenlp.table import format_table

    if not 0 < args.alpha < 1:
        print(f"error: --alpha must be in (0, 1), got {args.alpha}", file=sys.stderr)
        return 2
    build = PortfolioBuild(load_portfolio(args.portfolio, profile=args.profile), progress=False)
    try:
        bars = effective_bars(build)
        thresholds, calibration = calibrate_build(build, alpha=args.alpha, bars=bars)
    except (CalibrationUnavailable, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    rows = check_on(build.load_answers("dev"), thresholds, bars, calibration["counts"])
    print(f"conformal thresholds at alpha={args.alpha} from {build.root / 'answers' / 'calibration.jsonl'}")
    print("violation = Pr[wrong and accepted (u <= delta)] on the dev pool; wilson95 = its 95% interval\n")
    print(format_table([row.as_table_row(args.alpha) for row in rows]))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(
        json.dumps(
            {"alpha": args.alpha, "bars": bars, "rows": [{**row.as_table_row(args.alpha), "delta_value": None if row.delta == float("-inf") else row.delta} for row in rows]},
            indent=2,
        )
        + "\n"
    )
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
