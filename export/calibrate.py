"""Fit the serving rules from a build's calibration answers, and check them on pools nothing was fitted on.

The promise (README, "The cascade's promise"): for each task and each tier t1-t3, over the requests
that reach that tier, the expected quality lost by accepting its answer instead of escalating to
the tier calibration chose is at most the task's alpha (per-example quality: accuracy, F1 or chrF).

Every answer of every tier on every calibration record is in the build (all-pairs labelling), so
the served system can be replayed offline with the serving code itself (decide_route + run_cascade
over recorded answers, `replay`). Calibration, per task:

1. gamma: the router's confidence level (bls_router.service.cheapest_confident_tier), the smallest
   cost on the calibration records whose quality is >= TARGET_QUALITY_RATIO x Always-T4's (else
   the best quality). Structured tasks are cascade-first: T1 answers first, its 1 - u stands in
   for the router's T1 probability.
2. the cascade, cheapest tier first. Tier k's population is the calibration records the replayed
   system (router + the tiers below, already calibrated) actually sends to k; with fewer than
   MIN_POPULATION of them, all of the task's records (`population` says which). The loss of
   accepting record i is its regret l_i = (q_target,i - q_k,i)+ with q in [0, 1], and
   delta = crc_delta(u, l, alpha) (conformal risk control, routenlp_core.conformal). Targets are
   tried cheapest first (for cascade-first T1: the router's pick above T1), and one is taken only
   if it beats k (task metric) on the records k would escalate; with none, k is final for the task.
3. check_pool: the same replay on dev (or any other pool with answers) gives per (task, tier)
   the realised mean regret with a Wilson 95% interval, and the system's quality and cost.

Caveat: the target search looks at up to three candidates on the same data, so the guarantee is
per chosen target; the dev/confirm check is what shows whether it holds.

`routenlp calibrate` prints the check and writes the rules into a new version of the `routenlp`
model (atomic: the version folder is assembled beside its final place and renamed in), which
Triton loads with POST /v2/repository/models/routenlp/load while the old version keeps serving.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routenlp_core.cascade import CascadeOutcome, CascadePolicy, TierResult, TierUnavailable, run_cascade
from routenlp_core.conformal import U_MAX, RiskCheck, crc_delta, min_calibration_size, realised_risk
from routenlp_core.contract import BLS_MODEL, TIERS

ESCALATING_TIERS = TIERS[:-1]
CALIBRATION_POOL = "calibration"
TARGET_QUALITY_RATIO = 0.97  # gamma's target: this share of Always-T4's quality on calibration
GAMMA_GRID = tuple(round(0.02 * i, 2) for i in range(51))
MIN_POPULATION = 40  # fewer routed calibration answers than this: calibrate on the whole task
ROUTER_TARGET = "router"  # cascade-first T1 escalates to the router's pick above T1
PROMISE = (
    "per task and tier t1-t3, over the requests that reach the tier, the expected per-example quality lost "
    "by accepting its answer instead of escalating to the calibrated target is at most alpha"
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
    gamma: dict[str, float] = field(default_factory=dict)
    cascade_first: frozenset[str] = frozenset()

    def policy(self, prices: Mapping[str, float], structured: frozenset[str], cascade: bool = True) -> CascadePolicy:
        return CascadePolicy(thresholds=self.thresholds if cascade else {}, prices=prices, structured_tasks=structured, escalate_to=self.escalate_to)


@dataclass(frozen=True)
class Replayed:
    outcome: CascadeOutcome
    above_t1: str | None  # cascade-first: where T1 would escalate (the router's pick above T1)


def servable(task: str, structured: frozenset[str]) -> tuple[str, ...]:
    return TIERS if task in structured else TIERS[1:]


def replay(record: Mapping, answers: Answers, probs: Probabilities | None, rules: Rules, prices, structured: frozenset[str], cascade: bool = True) -> Replayed:
    """The served decision for one record, run over its recorded tier answers (serving code)."""
    from bls_router.service import decide_route
    from routenlp_core.serving_config import DEFAULT_GAMMA

    task, rows = record["task"], answers[record["id"]]
    allowed = [t for t in servable(task, structured) if t in rows]
    p = None if probs is None else probs.get(record["id"])
    decision = decide_route(task, p, allowed, rules.policy(prices, structured, cascade), rules.gamma.get(task, DEFAULT_GAMMA), task in rules.cascade_first)

    def call(tier: str) -> TierResult:
        if tier not in rows:
            raise TierUnavailable(f"{tier}: no recorded answer")
        return TierResult(rows[tier]["prediction"], float(rows[tier]["u"]), int(rows[tier].get("tokens", 0)))

    return Replayed(run_cascade(task, decision.start, call, decision.policy), decision.escalate_above_t1)


def _score(task: str, records: Sequence[Mapping], answers: Answers, tiers: Sequence[str]) -> float:
    from routenlp.metrics import corpus_score

    return corpus_score(task, [answers[r["id"]][t]["prediction"] for r, t in zip(records, tiers)], [r["target"] for r in records])


def system_quality_cost(task: str, records, answers: Answers, outcomes: Sequence[CascadeOutcome]) -> tuple[float, float]:
    """(task metric of the final answers, mean dollars per request)."""
    return _score(task, records, answers, [o.tier for o in outcomes]), sum(o.cost for o in outcomes) / max(1, len(outcomes))


def always_quality_cost(task: str, tier: str, records, answers: Answers, prices) -> tuple[float, float]:
    cost = sum(int(answers[r["id"]][tier].get("tokens", 0)) / 1000.0 * prices[tier] for r in records) / max(1, len(records))
    return _score(task, records, answers, [tier] * len(records)), cost


def fit_gamma(task: str, records, answers: Answers, probs: Probabilities, rules: Rules, prices, structured, ratio: float = TARGET_QUALITY_RATIO) -> tuple[float, dict]:
    """gamma with the smallest router-only cost whose quality is >= ratio x Always-T4's (else the best quality)."""
    t4_quality, t4_cost = always_quality_cost(task, "t4", records, answers, prices)
    curve = []
    for gamma in GAMMA_GRID:
        trial = Rules(rules.thresholds, rules.escalate_to, {**rules.gamma, task: gamma}, rules.cascade_first)
        outcomes = [replay(r, answers, probs, trial, prices, structured, cascade=False).outcome for r in records]
        quality, cost = system_quality_cost(task, records, answers, outcomes)
        curve.append((gamma, quality, cost))
    meeting = [c for c in curve if c[1] >= ratio * t4_quality]
    gamma, quality, cost = min(meeting, key=lambda c: (c[2], -c[1])) if meeting else max(curve, key=lambda c: (c[1], -c[2]))
    return gamma, {"target": f"{ratio} x always-t4", "met": bool(meeting), "quality": round(quality, 4), "cost": cost,
                   "t4_quality": round(t4_quality, 4), "t4_cost": t4_cost, "n": len(records)}


def calibrate_task(task: str, records, answers: Answers, probs: Probabilities | None, rules: Rules, prices, structured, alpha: float) -> dict[str, dict]:
    """Thresholds and escalation targets of `task`'s tiers, cheapest first, written into `rules`;
    returns per tier what each rests on."""
    from routenlp_core.serving_config import DEFAULT_GAMMA

    rules.thresholds.setdefault(task, {})
    rules.escalate_to.setdefault(task, {})
    tiers = [t for t in servable(task, structured) if all(t in answers[r["id"]] for r in records)]
    gamma = rules.gamma.get(task, DEFAULT_GAMMA)
    cells: dict[str, dict] = {}
    for k in tiers[:-1]:
        runs = {r["id"]: replay(r, answers, probs, rules, prices, structured) for r in records}
        reached = [r for r in records if any(s.tier == k and s.u is not None for s in runs[r["id"]].outcome.stages)]
        population, source = reached, "routed"
        if len(reached) < max(MIN_POPULATION, min_calibration_size(alpha)):
            population, source = list(records), f"whole task (only {len(reached)} routed)"
        first = task in rules.cascade_first and k == "t1" and probs is not None
        cap = 1.0 - gamma if first else math.inf  # cascade-first T1 also needs 1 - u >= gamma
        candidates = [ROUTER_TARGET] if first else [t for t in tiers if TIERS.index(t) > TIERS.index(k)]
        us = [float(answers[r["id"]][k]["u"]) for r in population]
        chosen = None
        for candidate in candidates:
            targets = [runs[r["id"]].above_t1 or tiers[1] if candidate == ROUTER_TARGET else candidate for r in population]
            regret = [max(0.0, float(answers[r["id"]][t]["quality"]) - float(answers[r["id"]][k]["quality"])) if u <= cap else 0.0
                      for r, t, u in zip(population, targets, us)]
            threshold = crc_delta(us, [min(1.0, x) for x in regret], alpha)
            escalated = [i for i, u in enumerate(us) if u > min(threshold.delta, cap)] or list(range(len(population)))
            subset = [population[i] for i in escalated]
            if _score(task, subset, answers, [targets[i] for i in escalated]) > _score(task, subset, answers, [k] * len(subset)):
                common = max(set(targets), key=[targets[i] for i in escalated].count)  # the router-down fallback
                chosen = (threshold, common, candidate)
                break
        if chosen is None:  # no pricier tier is better where k is unsure: k is final for the task
            rules.thresholds[task][k], rules.escalate_to[task][k] = U_MAX, None
            cells[k] = {"n": len(population), "population": source, "delta": U_MAX, "target": None, "alpha": alpha}
            continue
        threshold, target, candidate = chosen
        rules.thresholds[task][k], rules.escalate_to[task][k] = threshold.delta, target
        cells[k] = {"n": len(population), "population": source, "delta": None if math.isinf(threshold.delta) else threshold.delta,
                    "target": candidate if candidate == ROUTER_TARGET else target, "calibration_risk": round(threshold.calibration_risk, 4),
                    "accepted": threshold.accepted, "alpha": alpha}
    return cells


def calibrate_answers(records, answers: Answers, probs: Probabilities | None, prices, structured: frozenset[str], alphas: Mapping[str, float]) -> tuple[Rules, dict]:
    """Rules (gamma, thresholds, targets) for every task of `records`, and the record of the fit."""
    rules = Rules(cascade_first=frozenset(structured) if probs is not None else frozenset())
    by_task: dict[str, list] = {}
    for record in records:
        if record["id"] in answers:
            by_task.setdefault(record["task"], []).append(record)
    fits, cells, baseline = {}, {}, {}
    for task, task_records in sorted(by_task.items()):
        if len(servable(task, structured)) < 2 or not any(t in answers[task_records[0]["id"]] for t in ESCALATING_TIERS):
            continue
        if probs is not None:
            rules.gamma[task], fits[task] = fit_gamma(task, task_records, answers, probs, rules, prices, structured)
        cells[task] = calibrate_task(task, task_records, answers, probs, rules, prices, structured, alphas[task])
        outcomes = [replay(r, answers, probs, rules, prices, structured).outcome for r in task_records]
        baseline[task] = round(sum(1 for o in outcomes if o.escalations) / len(outcomes), 4)
    return rules, {"gamma_fit": fits, "cells": cells, "escalation_baseline": baseline}


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
    if not rules.thresholds:
        raise CalibrationUnavailable(f"{path} holds no answers of tiers {', '.join(ESCALATING_TIERS)}")
    record = {
        "status": "calibrated", "promise": PROMISE, "loss": "regret: (q_target - q_tier)+ if accepted", "alpha": alphas, "pool": CALIBRATION_POOL,
        "gamma": rules.gamma, "cascade_first": sorted(rules.cascade_first), **fit,
        "escalate_to": rules.escalate_to,  # the cascade's next tier per (task, tier) (CascadePolicy.next_tier)
    }
    return rules.thresholds, record


def rules_from_calibration(thresholds: Mapping[str, Mapping[str, float]], calibration: Mapping[str, Any]) -> Rules:
    return Rules({t: dict(d) for t, d in thresholds.items()}, {t: dict(d) for t, d in (calibration.get("escalate_to") or {}).items()},
                 dict(calibration.get("gamma") or {}), frozenset(calibration.get("cascade_first") or ()))


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
    """Per (task, tier) the realised regret of the served rules on `records`, and per task the
    system's quality and cost against Always-T4's."""
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
            for stage in run.outcome.stages:
                if stage.u is None or stage.tier == TIERS[-1]:
                    continue
                target = rules.escalate_to.get(task, {}).get(stage.tier)
                if stage.tier == "t1" and task in rules.cascade_first and target is not None:
                    target = run.above_t1 or target
                targets.setdefault((task, stage.tier), None if target is None else (ROUTER_TARGET if task in rules.cascade_first and stage.tier == "t1" else target))
                q = float(rows[stage.tier]["quality"])
                loss = max(0.0, float(rows[target]["quality"]) - q) if (target and stage.accepted) else 0.0
                wrong = bars is not None and task in structured and q < bars[task]
                losses.setdefault((task, stage.tier), []).append((min(1.0, loss), stage.accepted and wrong, not stage.accepted))
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
    rules = rules_from_calibration(thresholds, calibration)
    alphas = {**task_alphas(build, None), **(calibration.get("alpha") if isinstance(calibration.get("alpha"), Mapping) else {})}
    cells, summaries = [], {}
    for pool in pools:
        if not (build.root / "answers" / f"{pool}.jsonl").exists():
            continue
        records = build.pools.flat(pool)
        try:
            probs = router_pass_probabilities(build, records) if rules.gamma else None
        except FileNotFoundError:
            probs = None
        pool_cells, summaries[pool] = check_pool(pool, records, build.load_answers(pool), probs, rules, build_prices(build), structured_tasks(), alphas, bars)
        cells.extend(pool_cells)
    return cells, summaries


def write_calibrated_version(repository: Path, thresholds: Mapping[str, Mapping[str, float]], calibration: Mapping[str, Any]) -> Path:
    """A new version of the routenlp model: the latest version's files with the new thresholds.

    The models it routes to are untouched (their version is in the config: repository_version)."""
    from export.repository import latest_version, write_model_version
    from export.repository_builder import routenlp_model_spec
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
        if name != SERVING_CONFIG_FILE and not name.startswith(".") and name != "__pycache__"
    }
    files[SERVING_CONFIG_FILE] = config.dumps()
    return write_model_version(repository, routenlp_model_spec(config.target), files, version=latest + 1)
