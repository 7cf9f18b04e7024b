"""Fitting RouteNLP's cost-aware decision: per request the tier with the highest predicted quality
minus lambda x its expected price (applied by routenlp_core.utility, served by bls_router.service.
decide_route), then a cascade step whose acceptance threshold carries the guarantee.

Why a utility and not "cheapest tier with P(pass) >= gamma per task": the reported quality is a
macro mean over tasks and the cost a macro mean of dollars, so one lambda for all tasks spends where
a dollar buys the most quality (legal_clause T1 -> T2 is cheap and large; cs_response T2 -> T3 is
dear and small), which a per-task quality target cannot do.

Predicted quality q_hat(task, tier | x) is a ridge regression per (task, tier), fitted on the
calibration answers, of the tier's per-example quality on: the router's pass probabilities of the
four tiers and, for the structured tasks, T1's own confidence 1 - u (T1 costs ~1/800 of T4, so it
always answers first there and its confidence is a feature for free). Prices are the tier's mean
billed dollars on the task's calibration answers, divided by the macro mean of T4's (the unit of
the cost ratio), so lambda reads as "quality ratio points per cost-ratio point".

The cascade step (the promise, README "The cascade's promise"): for each task and tier k, over the
requests lambda routes to k, the mean per-example quality lost by accepting k's answer instead of
escalating to its target is at most the task's alpha, with probability >= 1 - EPSILON over the
calibration draw. Per (task, k) on the calibration records routed to k (all of the task's records
when fewer than MIN_POPULATION are), delta = ltt_delta (Learn then Test) on the regret
(q_target - q_k)+; the target is the cheapest pricier tier that beats k on the records k escalates
(none: k is final). One escalation at most, so the target's answer is final.

Why Learn then Test and not conformal risk control (guarantee="crc", kept as an ablation): CRC
bounds the regret in expectation over calibration draws, so one calibration set of ~130 answers per
cell can land well above alpha, and the confirm split's cs_intent T1 cell did (0.094 for 0.05,
Wilson lower bound 0.066). LTT bounds it with high probability at the price of more escalation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routenlp_core.cascade import CascadeOutcome, CascadePolicy, TierResult, TierUnavailable, run_cascade
from routenlp_core.conformal import U_MAX, crc_delta, ltt_delta, min_calibration_size
from routenlp_core.tasks import servable_tiers as servable
from routenlp_core.utility import UtilityRule, choose_tier, features

MIN_POPULATION = 40
EPSILON = 0.1  # LTT: the promise may fail for at most this share of calibration draws (the LTT paper's delta)
GUARANTEES = ("ltt", "crc")
SPLIT_SEED = 0  # the calibration pool's split into a fit part and a certify part
CERTIFY_SHARE = 2 / 3  # conformal needs the larger share: its threshold is a tail quantile
LAMBDA_GRID = (0.0, *(round(float(x), 4) for x in np.logspace(-2, 2.3, 30)), 1e6)  # 1e6: the cheapest tier

Answers = Mapping[str, Mapping[str, Mapping[str, Any]]]  # id -> tier -> {u, quality, prediction, tokens}
Probabilities = Mapping[str, Mapping[str, float]]  # id -> tier -> router pass probability


@dataclass
class QualityModel:
    """Linear q_hat per (task, tier) and each tier's price per task in cost-ratio units."""

    weights: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # task -> tier -> [intercept, *coef]
    price: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> tier -> dollars / macro T4 dollars

    def choose(self, task: str, x: Sequence[float], lam: float) -> str:
        return choose_tier(self.weights[task], self.price[task], x, lam)

    def rule(self, lam: float) -> UtilityRule:
        return UtilityRule(lam, self.weights, self.price)


def record_features(record: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]], probs: Probabilities) -> list[float]:
    t1 = rows.get("t1") if "t1" in servable(record["task"]) else None
    return features(probs[record["id"]], None if t1 is None else float(t1["u"]))


def fit_quality_model(records: Sequence[Mapping], answers: Answers, probs: Probabilities, prices: Mapping[str, float], ridge: float = 1.0) -> QualityModel:
    from sklearn.linear_model import Ridge

    by_task: dict[str, list] = {}
    for record in records:
        if record["id"] in answers and record["id"] in probs:
            by_task.setdefault(record["task"], []).append(record)
    dollars = {task: {t: float(np.mean([int(answers[r["id"]][t].get("tokens", 0)) / 1000.0 * prices[t] for r in rs])) for t in servable(task)}
               for task, rs in by_task.items()}
    unit = float(np.mean([d["t4"] for d in dollars.values()]))
    model = QualityModel()
    for task, rs in by_task.items():
        x = np.asarray([record_features(r, answers[r["id"]], probs) for r in rs])
        model.weights[task], model.price[task] = {}, {}
        for tier in servable(task):
            fit = Ridge(alpha=ridge).fit(x, [float(answers[r["id"]][tier]["quality"]) for r in rs])
            model.weights[task][tier] = [float(fit.intercept_), *(float(c) for c in fit.coef_)]
            model.price[task][tier] = dollars[task][tier] / unit
    return model


@dataclass
class Cascade:
    """Per task and tier: the acceptance threshold delta and the escalation target (None: final)."""

    delta: dict[str, dict[str, float]] = field(default_factory=dict)
    target: dict[str, dict[str, str | None]] = field(default_factory=dict)
    fit: dict[str, dict[str, dict]] = field(default_factory=dict)  # what each cell rests on

    def policy(self, prices: Mapping[str, float], structured: frozenset[str]) -> CascadePolicy:
        return CascadePolicy(thresholds=self.delta, prices=prices, structured_tasks=structured, escalate_to=self.target)


def _task_score(task: str, records, answers: Answers, tiers: Sequence[str]) -> float:
    from routenlp.metrics import corpus_score

    return corpus_score(task, [answers[r["id"]][t]["prediction"] for r, t in zip(records, tiers)], [r["target"] for r in records])


def calibrate_cascade(records, answers: Answers, chosen: Mapping[str, str], alphas: Mapping[str, float], guarantee: str = "ltt",
                      targets: Mapping[str, Mapping[str, str | None]] | None = None) -> Cascade:
    """delta and target per (task, tier) for a routing `chosen` (id -> tier) on calibration records;
    guarantee "ltt": with probability >= 1 - EPSILON, "crc": in expectation over calibration draws.
    `targets` given (chosen on other records): only each cell's delta is fitted here, for that
    target, so the one test per cell is all these records decide (what LTT's bound needs)."""
    if guarantee not in GUARANTEES:
        raise ValueError(f"guarantee must be one of {GUARANTEES}, not {guarantee!r}")
    epsilon = EPSILON if guarantee == "ltt" else None

    def certify(us: Sequence[float], regret: Sequence[float], alpha: float):
        return crc_delta(us, regret, alpha) if epsilon is None else ltt_delta(us, regret, alpha, epsilon)

    cascade = Cascade()
    by_task: dict[str, list] = {}
    for record in records:
        by_task.setdefault(record["task"], []).append(record)
    for task, rs in by_task.items():
        alpha, tiers = alphas[task], servable(task)
        min_n = max(MIN_POPULATION, min_calibration_size(alpha, epsilon=epsilon))
        cascade.delta[task], cascade.target[task], cascade.fit[task] = {}, {}, {}
        for k in tiers[:-1]:
            routed = [r for r in rs if chosen[r["id"]] == k]
            population, source = (routed, "routed") if len(routed) >= min_n else (rs, f"whole task (only {len(routed)} routed)")
            us = [float(answers[r["id"]][k]["u"]) for r in population]
            cascade.delta[task][k], cascade.target[task][k] = U_MAX, None
            cascade.fit[task][k] = {"n": len(population), "population": source, "target": None, "alpha": alpha, "guarantee": guarantee}
            candidates = tiers[tiers.index(k) + 1:] if targets is None else [t for t in [targets[task].get(k)] if t]
            for target in candidates:
                regret = [min(1.0, max(0.0, float(answers[r["id"]][target]["quality"]) - float(answers[r["id"]][k]["quality"]))) for r in population]
                threshold = certify(us, regret, alpha)
                escalated = [r for r, u in zip(population, us) if u > threshold.delta] or list(population)
                if targets is not None or _task_score(task, escalated, answers, [target] * len(escalated)) > _task_score(task, escalated, answers, [k] * len(escalated)):
                    cascade.delta[task][k], cascade.target[task][k] = threshold.delta, target
                    cascade.fit[task][k] = {**cascade.fit[task][k], "target": target, "accepted": threshold.accepted,
                                            "delta": None if math.isinf(threshold.delta) else round(threshold.delta, 6),
                                            "calibration_risk": round(threshold.calibration_risk, 4)}
                    break
    return cascade


def replay_served(record: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]], probs: Probabilities | None, rule: UtilityRule | None,
                  policy: CascadePolicy) -> tuple[CascadeOutcome, str]:
    """The served decision (bls_router.service.decide_route + run_cascade) for one record over its
    recorded answers: T1 first on structured tasks (its confidence is a feature), the utility's
    pick, then at most one escalation. Returns the outcome and the picked tier (where the request
    started when there is no pick: no rule, or no router probabilities)."""
    from bls_router.service import decide_route

    task = record["task"]
    allowed = [t for t in servable(task) if t in rows]
    p = None if probs is None else probs.get(record["id"])
    t1_u = float(rows["t1"]["u"]) if allowed[0] == "t1" and p is not None and rule is not None else None
    decision = decide_route(task, p, allowed, policy, rule, t1_u)

    def call(tier: str) -> TierResult:
        if tier not in rows:
            raise TierUnavailable(f"{tier}: no recorded answer")
        return TierResult(rows[tier]["prediction"], float(rows[tier]["u"]), int(rows[tier].get("tokens", 0)))

    return run_cascade(task, decision.start, call, decision.policy), decision.chosen or decision.start


def replay_route(record: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]], probs: Probabilities | None, rule: UtilityRule | None,
                 policy: CascadePolicy) -> list[str]:
    """The tiers the served decision calls for one record, in order (the last answers)."""
    outcome, _ = replay_served(record, rows, probs, rule, policy)
    return [stage.tier for stage in outcome.stages if stage.u is not None]


def split_fit_certify(records: Sequence[Mapping[str, Any]], seed: int = SPLIT_SEED) -> tuple[list, list]:
    """Per task a seeded random (1 - CERTIFY_SHARE) of the records to fit on, and the rest to certify on."""
    rng = np.random.default_rng(seed)
    fit, certify = [], []
    for task in sorted({r["task"] for r in records}):
        rs = [r for r in records if r["task"] == task]
        order = rng.permutation(len(rs))
        cut = round(len(rs) * (1.0 - CERTIFY_SHARE))
        fit += [rs[i] for i in order[:cut]]
        certify += [rs[i] for i in order[cut:]]
    return fit, certify


class UtilityRouting:
    """The quality model and lambda fitted on a third of the calibration records, and per lambda
    the cascade certified on the other two thirds: the records lambda routes to each tier there
    (memoised: a sweep asks for many lambdas).

    Why two parts: a threshold's bound holds for a population drawn independently of its data; a
    routing rule fitted on the same records picks, for each tier, the records where that tier
    happened to do well, and the certified regret then ran above alpha on fresh data
    (tests/unit/test_calibrate.py measures it). For the same reason everything chosen (lambda,
    each cell's escalation target) is chosen on the fit part with a provisional cascade fitted
    there, and the certify part only fits each cell's delta for its fixed target: with lambda and
    the targets picked by the certified cascade itself, 4 of 12 synthetic worlds ran above alpha."""

    def __init__(self, records, answers: Answers, probs: Probabilities, prices: Mapping[str, float], alphas: Mapping[str, float],
                 split: bool = True, guarantee: str = "ltt") -> None:
        self.guarantee = guarantee
        self.records = [r for r in records if r["id"] in answers and r["id"] in probs and all(t in answers[r["id"]] for t in servable(r["task"]))]
        self.answers, self.probs, self.alphas, self.prices = answers, probs, alphas, prices
        self.structured = frozenset(task for task in {r["task"] for r in self.records} if servable(task)[0] == "t1")
        self.fit_records, self.certify_records = split_fit_certify(self.records) if split else (self.records, self.records)
        self.model = fit_quality_model(self.fit_records, answers, probs, prices)
        self._cascades: dict[tuple[float, bool], Cascade] = {}
        self._served: dict[tuple[float, bool, bool], tuple[UtilityRule, CascadePolicy]] = {}

    def cascade(self, lam: float, provisional: bool = False) -> Cascade:
        """The certified cascade at `lam` (provisional: the fit part's own, which chooses the targets)."""
        key = (lam, provisional)
        if key not in self._cascades:
            rs = self.fit_records if provisional else self.certify_records
            chosen = {r["id"]: self.model.choose(r["task"], record_features(r, self.answers[r["id"]], self.probs), lam) for r in rs}
            targets = None if provisional else self.cascade(lam, provisional=True).target
            self._cascades[key] = calibrate_cascade(rs, self.answers, chosen, self.alphas, self.guarantee, targets)
        return self._cascades[key]

    def policy(self, lam: float, cascade: bool = True, provisional: bool = False) -> CascadePolicy:
        """The served cascade rules at `lam` (cascade False: the chosen tier's answer is final)."""
        if not cascade:
            return CascadePolicy({}, self.prices, self.structured, {})
        return self.cascade(lam, provisional).policy(self.prices, self.structured)

    def route(self, record, rows, probs: Probabilities, lam: float, cascade: bool = True, provisional: bool = False) -> list[str]:
        key = (lam, cascade, provisional)
        if key not in self._served:  # a sweep replays every record at each setting: built once per setting
            self._served[key] = (self.model.rule(lam), self.policy(lam, cascade, provisional))
        return replay_route(record, rows, probs, *self._served[key])

    def fit_lambda(self, ratio: float) -> tuple[float, dict]:
        """The operating point a deployment serves: the cheapest lambda whose quality on the fit
        part is >= ratio x Always-T4's there (export.operating_point.choose_knob)."""
        from export.operating_point import System, choose_knob, table_from_answers

        # the provisional cascade: lambda is chosen on the fit part alone, certify data decide nothing
        system = System("routenlp", lambda record, rows, knob: self.route(record, rows, self.probs, knob, provisional=True), LAMBDA_GRID)
        return choose_knob(system, self.fit_records, table_from_answers(self.answers, self.prices), ratio)
