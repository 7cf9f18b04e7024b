"""Fit the serving rules from a build's calibration answers, and check them on pools nothing was fitted on.

The promise (README, "The cascade's promise"): for each task and each tier the router picks, over
the requests it sends there, the mean quality lost by accepting that tier's answer instead of
escalating to the target calibration chose is at most the task's alpha (per-example quality:
accuracy, F1 or chrF), with probability >= 1 - epsilon (0.1) over the calibration draw.

Every answer of every tier on every calibration record is in the build (all-pairs labelling), so
the served system is replayed offline with the serving code itself (decide_route + run_cascade
over recorded answers, `replay`). Calibration (export/utility_router.py):

1. on a seeded third of the calibration pool (the fit part): q_hat per (task, tier), prices per
   task, and lambda, the cheapest setting whose macro quality there is >= TARGET_QUALITY_RATIO x
   Always-T4's (each lambda replayed with a provisional cascade fitted on that part, which also
   picks each cell's target: the cheapest pricier tier that beats k on the records k would
   escalate; none: k is final);
2. on the other two thirds (the certify part), the cascade at that lambda: per (task, tier k), on
   the records lambda sends to k (all of the task's when fewer than MIN_POPULATION are), delta =
   ltt_delta (Learn then Test) on the regret (q_target - q_k)+ for the fixed target. One
   escalation at most.
3. check_pool: the same replay on dev (or any pool with answers) gives per (task, picked tier) the
   realised mean regret with a Wilson 95% interval, and the system's quality and cost.

Without a router (a build that has none yet) every request starts at the cheapest tier and the
cascade is calibrated for that tier.

`routenlp calibrate` prints the check and writes the rules into a new version of the `routenlp`
model (atomic: the version folder is assembled beside its final place and renamed in), which
Triton loads with POST /v2/repository/models/routenlp/load while the old version keeps serving.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routenlp_core.cascade import CascadeOutcome, CascadePolicy
from routenlp_core.conformal import RiskCheck, realised_risk
from routenlp_core.contract import BLS_MODEL, TIERS
from routenlp_core.utility import UtilityRule

ESCALATING_TIERS = TIERS[:-1]
CALIBRATION_POOL = "calibration"
TARGET_QUALITY_RATIO = 0.97  # lambda's target: this share of Always-T4's quality on calibration
PROMISE = (
    "per task and tier the router picks, over the requests it sends there, the mean per-example quality lost "
    "by accepting that tier's answer instead of escalating to the calibrated target is at most alpha, "
    "with probability >= 0.9 over the calibration draw"
)

Answers = Mapping[str, Mapping[str, Mapping[str, Any]]]  # id -> tier -> {task, u, quality, prediction, tokens}
Probabilities = Mapping[str, Mapping[str, float]]  # id -> tier -> router pass probability


class CalibrationUnavailable(RuntimeError):
    """The build has no calibration answers (or the repository no routenlp model) to work from."""


@dataclass
class Rules:
    """What calibration fits and the serving config carries."""

    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    escalate_to: dict[str, dict[str, str | None]] = field(default_factory=dict)
    utility: UtilityRule | None = None
    cascade_first: frozenset[str] = frozenset()

    def policy(self, prices: Mapping[str, float], structured: frozenset[str], cascade: bool = True) -> CascadePolicy:
        return CascadePolicy(thresholds=self.thresholds if cascade else {}, prices=prices, structured_tasks=structured, escalate_to=self.escalate_to)


@dataclass(frozen=True)
class Replayed:
    outcome: CascadeOutcome
    picked: str  # the tier the decision sent the request to (the utility's pick, or where it started)


def servable(task: str, structured: frozenset[str]) -> tuple[str, ...]:
    return TIERS if task in structured else TIERS[1:]


def replay(record: Mapping, answers: Answers, probs: Probabilities | None, rules: Rules, prices, structured: frozenset[str], cascade: bool = True) -> Replayed:
    """The served decision for one record, run over its recorded tier answers (serving code)."""
    from export.utility_router import replay_served

    outcome, picked = replay_served(record, answers[record["id"]], probs, rules.utility, rules.policy(prices, structured, cascade))
    return Replayed(outcome, picked)


def _score(task: str, records: Sequence[Mapping], answers: Answers, tiers: Sequence[str]) -> float:
    from routenlp.metrics import corpus_score

    return corpus_score(task, [answers[r["id"]][t]["prediction"] for r, t in zip(records, tiers)], [r["target"] for r in records])


def system_quality_cost(task: str, records, answers: Answers, outcomes: Sequence[CascadeOutcome]) -> tuple[float, float]:
    """(task metric of the final answers, mean dollars per request)."""
    return _score(task, records, answers, [o.tier for o in outcomes]), sum(o.cost for o in outcomes) / max(1, len(outcomes))


def always_quality_cost(task: str, tier: str, records, answers: Answers, prices) -> tuple[float, float]:
    cost = sum(int(answers[r["id"]][tier].get("tokens", 0)) / 1000.0 * prices[tier] for r in records) / max(1, len(records))
    return _score(task, records, answers, [tier] * len(records)), cost


def calibrate_answers(records, answers: Answers, probs: Probabilities | None, prices, structured: frozenset[str], alphas: Mapping[str, float]) -> tuple[Rules, dict]:
    """Rules (the utility and lambda, thresholds, targets) for every task of `records`, and the record of the fit."""
    from export.utility_router import UtilityRouting, calibrate_cascade

    usable = [r for r in records if r["id"] in answers and all(t in answers[r["id"]] for t in servable(r["task"], structured))]
    if probs is None:  # no router: every request starts at the cheapest tier
        cascade = calibrate_cascade(usable, answers, {r["id"]: servable(r["task"], structured)[0] for r in usable}, alphas)
        rules, fit = Rules(cascade.delta, cascade.target), {"lambda_fit": None}
    else:
        routing = UtilityRouting(usable, answers, probs, prices, alphas)
        lam, lambda_fit = routing.fit_lambda(TARGET_QUALITY_RATIO)
        cascade = routing.cascade(lam)
        tasks = {r["task"] for r in routing.records}
        rules = Rules(cascade.delta, cascade.target, routing.model.rule(lam), frozenset(t for t in tasks if t in structured))
        fit = {"lambda_fit": {**lambda_fit, "target": f"{TARGET_QUALITY_RATIO} x always-t4 (macro over tasks)", "n": len(routing.fit_records), "certify_n": len(routing.certify_records)}}
    baseline = {}
    for task in sorted({r["task"] for r in usable}):
        outcomes = [replay(r, answers, probs, rules, prices, structured).outcome for r in usable if r["task"] == task]
        baseline[task] = round(sum(1 for o in outcomes if o.escalations) / len(outcomes), 4)
    return rules, {**fit, "cells": cascade.fit, "escalation_baseline": baseline}


def task_alphas(build, alpha: float | None) -> dict[str, float]:
    from routenlp_core.serving_config import DEFAULT_ALPHA
    from routenlp_core.tasks import TASK_NAMES

    portfolio = getattr(build, "portfolio", None)
    return {task: float(alpha) if alpha is not None else (portfolio.tasks[task].alpha if portfolio else DEFAULT_ALPHA) for task in TASK_NAMES}


def build_prices(build) -> dict[str, float]:
    portfolio = getattr(build, "portfolio", None)
    if portfolio is None:
        from routenlp.portfolio import load_portfolio

        portfolio = load_portfolio(profile="tiny")
    return {tier.name: tier.price_per_1k_tokens for tier in portfolio.ordered_tiers()}


def structured_tasks() -> frozenset[str]:
    from routenlp_core.tasks import TASK_NAMES, get_task

    return frozenset(t for t in TASK_NAMES if get_task(t).structured)


def calibrate_build(build, alpha: float | None = None, bars: Mapping[str, float] | None = None) -> tuple[dict, dict]:
    """(thresholds, calibration record) from `build`'s calibration answers; alpha None: each
    task's alpha from the portfolio. `bars` only label "wrong" in the check's side column."""
    path = build.root / "answers" / f"{CALIBRATION_POOL}.jsonl"
    if not path.exists():
        raise CalibrationUnavailable(f"{path} not found: build the portfolio first (`routenlp export --profile {build.profile.name}`)")
    answers = build.load_answers(CALIBRATION_POOL)
    records = build.pools.flat(CALIBRATION_POOL)
    try:
        probs = router_pass_probabilities(build, records)
    except FileNotFoundError:  # no router built (yet): every request starts at the cheapest tier
        probs = None
    alphas = task_alphas(build, alpha)
    rules, fit = calibrate_answers(records, answers, probs, build_prices(build), structured_tasks(), alphas)
    if not any(rules.thresholds.values()):
        raise CalibrationUnavailable(f"{path} holds no answers of tiers {', '.join(ESCALATING_TIERS)}")
    record = {
        "status": "calibrated", "promise": PROMISE, "loss": "regret: (q_target - q_tier)+ if accepted", "alpha": alphas, "pool": CALIBRATION_POOL,
        "utility": None if rules.utility is None else rules.utility.to_json(), "cascade_first": sorted(rules.cascade_first), **fit,
        "escalate_to": rules.escalate_to,  # the cascade's next tier per (task, tier) (CascadePolicy.next_tier)
    }
    return rules.thresholds, record


def rules_from_calibration(thresholds: Mapping[str, Mapping[str, float]], calibration: Mapping[str, Any]) -> Rules:
    utility = calibration.get("utility")
    return Rules({t: dict(d) for t, d in thresholds.items()}, {t: dict(d) for t, d in (calibration.get("escalate_to") or {}).items()},
                 None if not utility else UtilityRule.from_json(utility), frozenset(calibration.get("cascade_first") or ()))


def router_pass_probabilities(build, records) -> dict[str, dict[str, float]]:
    """record id -> tier -> the build's router's probability that the tier meets the bar."""
    from bls_router.service import router_probabilities
    from export.router_model import load_router, router_logits

    model, meta = load_router(build.root / "router")
    logits = router_logits(model, build.tokenizer(), records, meta["max_len"])
    return {record["id"]: router_probabilities(row.tolist(), model.args["tier_names"]) for record, row in zip(records, logits)}


# ---------------------------------------------------------------- the check on other pools


@dataclass(frozen=True)
class CellCheck:
    pool: str
    task: str
    tier: str
    target: str | None
    alpha: float
    regret: RiskCheck  # realised mean regret over the requests that reached the tier
    wrong_accepted: float | None  # share of them answered wrong (below the bar) and accepted
    escalated: float

    def as_table_row(self) -> dict[str, str]:
        final = self.target is None
        return {
            "pool": self.pool, "task": self.task, "tier": self.tier, "target": self.target or "final", "alpha": f"{self.alpha:g}",
            "n": str(self.regret.n), "regret": "-" if final else f"{self.regret.risk:.3f}",
            "wilson95": "-" if final else f"[{self.regret.wilson[0]:.3f}, {self.regret.wilson[1]:.3f}]",
            "escalated": f"{self.escalated:.2f}", "wrong_accepted": "-" if self.wrong_accepted is None else f"{self.wrong_accepted:.3f}",
            "status": "final (no better tier)" if final else self.regret.status(self.alpha),
        }


def check_pool(pool: str, records, answers: Answers, probs: Probabilities | None, rules: Rules, prices, structured, alphas, bars: Mapping[str, float] | None = None) -> tuple[list[CellCheck], dict]:
    """Per (task, tier the decision picked) the realised regret of the served rules on `records`,
    and per task the system's quality and cost against Always-T4's."""
    losses: dict[tuple[str, str], list[tuple[float, bool, bool]]] = {}
    targets: dict[tuple[str, str], str | None] = {}
    summary: dict[str, dict] = {}
    by_task: dict[str, list] = {}
    for record in records:
        if record["id"] in answers:
            by_task.setdefault(record["task"], []).append(record)
    for task, task_records in sorted(by_task.items()):
        runs = [replay(r, answers, probs, rules, prices, structured) for r in task_records]
        for record, run in zip(task_records, runs):
            rows = answers[record["id"]]
            stage = next((st for st in run.outcome.stages if st.tier == run.picked and st.u is not None), None)
            if stage is None or run.picked == TIERS[-1]:
                continue
            target = rules.escalate_to.get(task, {}).get(run.picked)
            targets.setdefault((task, run.picked), target)
            q = float(rows[run.picked]["quality"])
            loss = max(0.0, float(rows[target]["quality"]) - q) if (target and stage.accepted) else 0.0
            wrong = bars is not None and task in structured and q < bars[task]
            losses.setdefault((task, run.picked), []).append((min(1.0, loss), stage.accepted and wrong, not stage.accepted))
        quality, cost = system_quality_cost(task, task_records, answers, [r.outcome for r in runs])
        t4_quality, t4_cost = always_quality_cost(task, "t4", task_records, answers, prices)
        oracle = [oracle_tier(task, answers[r["id"]], bars, structured) for r in task_records]
        summary[task] = {"n": len(task_records), "quality": round(quality, 4), "cost": cost, "t4_quality": round(t4_quality, 4), "t4_cost": t4_cost,
                         "quality_ratio": round(quality / t4_quality, 4) if t4_quality else None, "cost_ratio": round(cost / t4_cost, 4) if t4_cost else None,
                         "oracle_agreement": round(sum(r.outcome.tier == o for r, o in zip(runs, oracle)) / len(runs), 4),
                         "cheapest_agreement": round(sum(servable(task, structured)[0] == o for o in oracle) / len(runs), 4)}
    cells = []
    for (task, tier), rows in sorted(losses.items()):
        cells.append(CellCheck(pool, task, tier, targets[(task, tier)], alphas[task], realised_risk([r[0] for r in rows]),
                               sum(r[1] for r in rows) / len(rows) if task in structured and bars is not None else None,
                               sum(r[2] for r in rows) / len(rows)))
    return cells, summary


def oracle_tier(task: str, rows: Mapping[str, Mapping[str, Any]], bars: Mapping[str, float] | None, structured) -> str:
    """The cheapest tier meeting the example's bar (the router's label: the task's bar, or T4's
    quality less T4_TOLERANCE on generation tasks), else the best answer."""
    from export.router_loss import T4_TOLERANCE

    tiers = [t for t in servable(task, structured) if t in rows]
    quality = {t: float(rows[t]["quality"]) for t in tiers}
    bar = (bars or {}).get(task, 1.0) if task in structured else quality.get("t4", 1.0) - T4_TOLERANCE
    return next((t for t in tiers if quality[t] >= bar), max(tiers, key=lambda t: (quality[t], -TIERS.index(t))))


def check_build(build, thresholds, calibration, pools: Sequence[str] = ("dev",), bars=None) -> tuple[list[CellCheck], dict]:
    """check_pool on each of `pools` whose answers the build has (e.g. dev, and a confirm split)."""
    from export.confirm import CONFIRM_POOL, load_confirm_records

    rules = rules_from_calibration(thresholds, calibration)
    alphas = {**task_alphas(build, None), **(calibration.get("alpha") if isinstance(calibration.get("alpha"), Mapping) else {})}
    cells, summaries = [], {}
    for pool in pools:
        if not (build.root / "answers" / f"{pool}.jsonl").exists():
            continue
        records = load_confirm_records() if pool == CONFIRM_POOL else build.pools.flat(pool)
        try:
            probs = router_pass_probabilities(build, records) if rules.utility else None
        except FileNotFoundError:
            probs = None
        pool_cells, summaries[pool] = check_pool(pool, records, build.load_answers(pool), probs, rules, build_prices(build), structured_tasks(), alphas, bars)
        cells.extend(pool_cells)
    return cells, summaries


def write_calibrated_version(repository: Path, thresholds: Mapping[str, Mapping[str, float]], calibration: Mapping[str, Any]) -> Path:
    """A new version of the routenlp model: the latest version's tokenizer with the new rules, and
    the serving code of this checkout (adapter + code snapshot): the rules it writes may need code
    the latest version does not have, and each version carries the code that serves it.

    The models it routes to are untouched (their version is in the config: repository_version)."""
    from bls_router.version_code import CODE_DIR
    from export.repository import latest_version, write_model_version
    from export.repository_builder import ROUTENLP_BLS, routenlp_model_spec, serving_code_files
    from routenlp_core.serving_config import SERVING_CONFIG_FILE, load_serving_config

    repository = Path(repository)
    model_dir = repository / BLS_MODEL
    latest = latest_version(model_dir) if model_dir.is_dir() else 0
    if latest == 0:
        raise CalibrationUnavailable(f"{model_dir} has no version: write the repository first (`routenlp export`)")
    source = model_dir / str(latest)
    config = load_serving_config(source).with_thresholds(thresholds, calibration)
    files: dict[str, Any] = {
        name: source / name
        for name in sorted(os.listdir(source))
        if name not in (SERVING_CONFIG_FILE, CODE_DIR, "model.py") and not name.startswith(".") and name != "__pycache__"
    }
    files.update({"model.py": ROUTENLP_BLS, SERVING_CONFIG_FILE: config.dumps(), **serving_code_files()})
    return write_model_version(repository, routenlp_model_spec(config.target), files, version=latest + 1)
