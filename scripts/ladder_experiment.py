"""Measure a decoder recipe against the built default portfolio before adopting it (issue 19).

A copy of a built stage cache (default: artifacts/default-default, the build of the committed pack)
is rebuilt with a variant of the portfolio file (`--set dotted.key=TOML value`, applied to its raw
table): the pipeline's own steps, so only the decoders whose key
the variant changes (and every decoder grown from them) retrain and relabel; the rest are cache hits.
Then the ladder table exactly as `routenlp export` computes it (bars fitted on the calibration
answers, dev reports), appended as a run to results/ladder_experiments.json.

    .venv/bin/python scripts/ladder_experiment.py --name pretrain \
        --set 'profiles.default.tiers.t4.train.pretrain={ tokens = 3000000 }'
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
import tomllib
from pathlib import Path

from export.ladder import format_ladder, ladder_table
from export.pipeline import DECODER_TIERS, PortfolioBuild
from export.quality import quality_table
from export.stage_cache import StageCache
from routenlp.portfolio import DEFAULT_PORTFOLIO, TIER_ORDER, parse_portfolio
from routenlp_core.paths import ARTIFACTS_DIR, REPO_ROOT
from routenlp_core.tasks import TASK_NAMES


def variant(raw: dict, settings: list[str]) -> dict:
    """The raw portfolio table with each `dotted.key=TOML value` set (missing tables created)."""
    for setting in settings:
        key, _, value = setting.partition("=")
        *path, last = key.strip().split(".")
        table = raw
        for part in path:
            table = table.setdefault(part, {})
        table[last] = tomllib.loads(f"v = {value}")["v"]
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--portfolio", type=Path, default=DEFAULT_PORTFOLIO, help="the portfolio file the variant starts from")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted key into the portfolio table = a TOML value (repeatable)")
    parser.add_argument("--name", required=True, help="the run's name in the results file")
    parser.add_argument("--base", type=Path, default=ARTIFACTS_DIR / "default-default", help="the built stage cache to start from (copied)")
    parser.add_argument("--root", type=Path, default=REPO_ROOT / "var" / "ladder_experiment", help="where the copy is rebuilt")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "ladder_experiments.json")
    parser.add_argument("--note", default="", help="the run's recipe, in words")
    args = parser.parse_args()

    if not args.root.exists():
        shutil.copytree(args.base, args.root)
    portfolio = parse_portfolio(variant(tomllib.loads(args.portfolio.read_text()), args.set), "default", args.portfolio)
    build = PortfolioBuild(portfolio, root=args.root)
    started = time.perf_counter()
    build.build_tokenizer()
    decoders = {tier: build.build_decoder(tier) for tier in DECODER_TIERS}
    build.build_answers()  # every tier's answers: a changed decoder relabels alone
    seconds = round(time.perf_counter() - started, 1)

    bars = build.bars_for(quality_table(build.load_answers("calibration"), build.pools.flat("calibration")))
    ladder = ladder_table(
        build.load_answers("dev"), build.pools.flat("dev"), bars,
        prices={t.name: t.price_per_1k_tokens for t in portfolio.ordered_tiers()},
        paper_bars={task: portfolio.tasks[task].paper_bar for task in TASK_NAMES},
    )
    print(format_ladder(ladder))
    cache = StageCache(args.root)
    stamps = {step: cache.stamp(step) for step in [f"decoders/{t}" for t in DECODER_TIERS] + [f"tier_answers/{t}" for t in TIER_ORDER]}
    run = {
        "name": args.name,
        "recipe": args.note,
        "portfolio_tiers_train": {t.name: dict(t.train) for t in portfolio.ordered_tiers() if t.train},
        "command": "python scripts/ladder_experiment.py --name " + shlex.quote(args.name) + "".join(f" --set {shlex.quote(s)}" for s in args.set),
        "seconds": seconds,
        "decoders": decoders,
        "stage_build_seconds": {step: (s or {}).get("build_seconds") for step, s in stamps.items()},
        "bars": bars,
        "ladder": ladder,
        "rules_passed": sum(r["passed"] for r in ladder["rules"]),
    }
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    results["runs"] = [r for r in results["runs"] if r["name"] != args.name] + [run]
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"{sum(r['passed'] for r in ladder['rules'])} of {len(ladder['rules'])} rules pass; wrote {args.out}")


if __name__ == "__main__":
    main()
