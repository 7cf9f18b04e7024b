"""Every system at the operating point fitted on calibration, scored on dev and on the confirm split.

The curves (`routenlp bench --offline`) show each system over its whole knob; their matched-quality
headline picks the knob on the split it reports. Here the knob of every system (RouteNLP's lambda,
each peer's threshold or budget) is chosen on the calibration pool as the cheapest setting reaching
quality >= 0.97 x Always-T4 there (`curves.choose_knob`), then frozen and scored on dev and on the
confirm split (export/confirm.py: raw records no build step saw): what a user deploying that
setting would get. Paired bootstrap over records (task-stratified) gives each peer's cost and
quality difference to RouteNLP.

Oracle agreement: how often the tier that answers is the oracle's (the cheapest tier meeting the
task's bar, else the best answer); Always-T1 is the constant cheapest-servable rule.

The guarantee table: per (task, tier) cell of RouteNLP's cascade (Learn then Test; and of the
conformal-risk-control ablation) at its fitted lambda, the realised mean regret (quality lost by
accepting the tier instead of escalating to its target) over the requests the router sent to that
tier, with its Wilson 95% interval, against the task's alpha.

    python -m clients.confirm_eval [--per-task 300] [--raw ../shared/data] [--bootstrap 200]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routenlp_core.contract import TIERS
from routenlp_core.paths import REPO_ROOT, RESULTS_DIR

POOLS = ("calibration", "dev", "confirm")


def confirm_answers(build, records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict]]:
    """The build's tier answers on the confirm records, labelled once per tier and kept under the
    build with the key of the weights that gave them: a tier whose weights changed (a rebuilt T4)
    is relabelled alone, and no answer of other weights is ever scored."""
    from export.confirm import CONFIRM_POOL, label_records

    path = build.root / "answers" / f"{CONFIRM_POOL}.jsonl"
    keys_path = path.with_suffix(".keys.json")
    keys = {tier: build.tier_key(tier) for tier in TIERS}
    labelled = json.loads(keys_path.read_text(encoding="utf-8")) if keys_path.exists() and path.exists() else {}
    stale = [tier for tier in TIERS if labelled.get(tier) != keys[tier]]
    if stale:
        print(f"labelling {len(records)} confirm records with {', '.join(stale)} (once per tier's weights; about 30 min on 2 cores for all four)")
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if json.loads(line)["tier"] not in stale] if path.exists() else []
        rows = [json.dumps(row, sort_keys=True) for row in label_records(build, records, stale)]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in kept + rows), encoding="utf-8")
        keys_path.write_text(json.dumps(keys, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return build.load_answers(CONFIRM_POOL)


def confirm_split(raw: Path | None, per_task: int) -> list[dict[str, Any]]:
    from export.confirm import confirm_records, confirm_records_path, load_confirm_records

    path = confirm_records_path()  # committed: a clone without ../shared can rescore
    if not path.exists():
        if raw is None:
            raise SystemExit(f"{path} is missing: pass --raw (the raw datasets) to draw it")
        records = confirm_records(raw, per_task)
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8")
    return load_confirm_records()


def guarantee_cells(routing, lam: float, records, table, probs) -> list[dict[str, Any]]:
    """Per (task, tier the router chose) with a target to escalate to, the realised regret of
    accepting, with Wilson 95% (export.calibrate.check_pool over the served decision at `lam`)."""
    from export.calibrate import Rules, check_pool, structured_tasks

    cascade = routing.cascade(lam)
    rules = Rules(cascade.delta, cascade.target, routing.model.rule(lam), routing.structured)
    cells, _ = check_pool("", records, table, probs, rules, routing.prices, structured_tasks(), routing.alphas)
    return [{"task": c.task, "tier": c.tier, "target": c.target, "alpha": c.alpha, "n": c.regret.n, "regret": round(c.regret.risk, 4),
             "wilson95": [round(x, 4) for x in c.regret.wilson], "status": c.regret.status(c.alpha)}
            for c in cells if c.target is not None]  # a final tier has nothing to escalate to: no promise


def evaluate(build, pools: Mapping[str, tuple[list, dict]], n_boot: int) -> dict[str, Any]:
    from clients import curves
    from clients.bench import peer_systems, routenlp_systems, utility_routing
    from export.calibrate import oracle_tier, router_pass_probabilities, structured_tasks
    from export.serving_config_builder import effective_bars

    routing, crc = utility_routing(build), utility_routing(build, guarantee="crc")
    every = [r for records, _ in pools.values() for r in records]
    probs = router_pass_probabilities(build, every)
    bars = effective_bars(build)
    crc_name = "routenlp (CRC cascade)"
    ours = [*routenlp_systems(routing, probs), curves.routenlp(crc, probs, crc_name)]
    systems = [*ours, *(curves.fixed(t) for t in TIERS), *peer_systems(build, bars)]
    cal_records, cal_table = pools["calibration"]
    # RouteNLP's knobs as `routenlp calibrate` fits the served lambda (UtilityRouting.fit_lambda): on
    # the fit part of the calibration pool, replayed with that part's own provisional cascade, so the
    # certify part decides nothing but the thresholds; the peers' knobs on all of the pool
    fit_ids = {r["id"] for r in routing.fit_records}
    fit_part = [r for r in cal_records if r["id"] in fit_ids]
    twins = {s.name: s for s in [*routenlp_systems(routing, probs, provisional=True), curves.routenlp(crc, probs, crc_name, provisional=True)]}
    fitted = {s.name: curves.choose_knob(twins[s.name], fit_part, cal_table) if s.name in twins else curves.choose_knob(s, cal_records, cal_table)
              for s in systems}
    lam = fitted["routenlp"][0]
    out: dict[str, Any] = {"fitted_on": "calibration", "match_ratio": curves.MATCH_RATIO, "n_boot": n_boot, "routenlp_lambda": lam, "pools": {}}
    for pool in ("dev", "confirm"):
        records, table = pools[pool]
        scorer = curves.Scorer(records, table, n_boot, 0)
        t4_q, t4_qb = scorer.quality(["t4"] * len(records))
        t4_c, t4_cb = scorer.cost(np.asarray([float(table[r["id"]]["t4"]["dollars"]) for r in records]))
        rows, boots = [], {}
        # the router's training label: the cheapest tier meeting the bar, else the best answer
        oracle = [oracle_tier(r["task"], table[r["id"]], bars, structured_tasks()) for r in records]
        for system in systems:
            knob = fitted[system.name][0]
            (point,) = curves.replay_system(curves.System(system.name, system.decide, (knob,)), records, table)
            q, qb = scorer.quality(point.tiers)
            c, cb = scorer.cost(point.dollars)
            boots[system.name] = (qb / t4_qb, cb / t4_cb)
            rows.append({"name": system.name, "knob": knob, "calibration_quality_ratio": fitted[system.name][1]["fit_quality_ratio"],
                         "quality_ratio": round(q / t4_q, 4), "cost_ratio": round(c / t4_c, 5),
                         "oracle_agreement": round(float(np.mean([a == b for a, b in zip(point.tiers, oracle)])), 4)})
        ours_q, ours_c = boots["routenlp"]
        for row in rows:
            if row["name"] != "routenlp":
                peer_q, peer_c = boots[row["name"]]
                row["quality_minus_routenlp_ci95"] = [round(float(x), 4) for x in np.percentile(peer_q - ours_q, [2.5, 97.5])]
                row["cost_minus_routenlp_ci95"] = [round(float(x), 5) for x in np.percentile(peer_c - ours_c, [2.5, 97.5])]
        out["pools"][pool] = {"n": len(records), "systems": rows, "guarantee": guarantee_cells(routing, lam, records, table, probs),
                              "guarantee_crc": guarantee_cells(crc, fitted[crc_name][0], records, table, probs)}
    out["router_as_oracle_predictor"] = oracle_predictor(pools, probs, bars)
    return out


def oracle_predictor(pools: Mapping[str, tuple[list, dict]], probs: Mapping[str, Mapping[str, float]], bars) -> dict[str, Any]:
    """The router read as a predictor of the oracle tier, not as the deployed decision: the cheapest
    servable tier whose router probability of meeting the bar is at least gamma (else the likeliest),
    gamma fitted on calibration for agreement with the oracle; beside it the constant
    cheapest-servable rule. Says whether the router can tell where a cheap tier suffices."""
    from export.calibrate import oracle_tier, servable, structured_tasks

    structured = structured_tasks()

    def agreement(pool: str, pick) -> float:
        records, table = pools[pool]
        return round(float(np.mean([pick(r) == oracle_tier(r["task"], table[r["id"]], bars, structured) for r in records])), 4)

    def by_router(gamma: float):
        def pick(record) -> str:
            tiers, p = servable(record["task"], structured), probs[record["id"]]
            return next((t for t in tiers if p[t] >= gamma), max(tiers, key=lambda t: p[t]))
        return pick

    gammas = [round(g, 2) for g in np.arange(0.05, 1.0, 0.05)]
    gamma = max(gammas, key=lambda g: agreement("calibration", by_router(g)))
    cheapest = lambda record: servable(record["task"], structured)[0]  # noqa: E731
    return {"gamma_fitted_on": "calibration", "gamma": gamma,
            **{pool: {"router": agreement(pool, by_router(gamma)), "constant_cheapest_servable": agreement(pool, cheapest)} for pool in pools}}


def main(argv: Sequence[str] | None = None) -> int:
    from clients import curves
    from export.calibrate import build_prices
    from export.pipeline import PortfolioBuild
    from routenlp.portfolio import load_portfolio
    from routenlp.table import format_table
    from routenlp_core.tasks import servable_tiers

    parser = argparse.ArgumentParser(prog="python -m clients.confirm_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--raw", type=Path, default=None, help="the raw datasets (only to draw a missing confirm split)")
    parser.add_argument("--per-task", type=int, default=300)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "confirm_eval.json")
    args = parser.parse_args(argv)

    build = PortfolioBuild(load_portfolio(profile=args.profile), progress=False)
    prices = build_prices(build)
    pools = {}
    for pool in POOLS:
        records = confirm_split(args.raw, args.per_task) if pool == "confirm" else build.pools.flat(pool)
        answers = confirm_answers(build, records) if pool == "confirm" else build.load_answers(pool)
        table = curves.table_from_answers(answers, prices)
        pools[pool] = ([r for r in records if all(t in table.get(r["id"], {}) for t in servable_tiers(r["task"]))], table)
    out = evaluate(build, pools, args.bootstrap)
    out["command"] = "python -m clients.confirm_eval " + " ".join(sys.argv[1:] if argv is None else argv)
    for pool, entry in out["pools"].items():
        print(f"\n{pool} ({entry['n']} records), every knob fitted on calibration:")
        print(format_table([{k: v for k, v in row.items() if k != "quality_minus_routenlp_ci95"} for row in entry["systems"]]))
        print(f"\nRouteNLP's cascade on {pool} (lambda {out['routenlp_lambda']}): realised regret per (task, tier)")
        print(format_table(entry["guarantee"]))
        print(f"\nthe CRC-cascade ablation on {pool}: realised regret per (task, tier)")
        print(format_table(entry["guarantee_crc"]))
    predictor = out["router_as_oracle_predictor"]
    print(f"\noracle agreement of the router read as a predictor (gamma {predictor['gamma']}, fitted on calibration) vs the constant cheapest-servable rule:")
    print(format_table([{"pool": pool, **predictor[pool]} for pool in pools]))
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out.relative_to(REPO_ROOT) if args.out.is_relative_to(REPO_ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
