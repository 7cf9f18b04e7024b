"""RouteNLP's cost-aware decision: per request the tier with the highest predicted quality minus
lambda x its expected price, then a cascade step whose acceptance threshold carries the guarantee.

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
requests lambda routes to k, the expected per-example quality lost by accepting k's answer instead
of escalating to its target is at most the task's alpha. Per (task, k) on the calibration records
routed to k (all of the task's records when fewer than MIN_POPULATION are), delta = crc_delta on
the regret (q_target - q_k)+; the target is the cheapest pricier tier that beats k on the records
k escalates (none: k is final). One escalation at most, so the target's answer is final.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routenlp_core.conformal import U_MAX, crc_delta, min_calibration_size
from routenlp_core.contract import TIERS
from routenlp_core.tasks import servable_tiers as servable

MIN_POPULATION = 40
LAMBDA_GRID = (0.0, *(round(float(x), 4) for x in np.logspace(-2, 2.3, 30)), 1e6)  # 1e6: the cheapest tier

Answers = Mapping[str, Mapping[str, Mapping[str, Any]]]  # id -> tier -> {u, quality, prediction, tokens}
Probabilities = Mapping[str, Mapping[str, float]]  # id -> tier -> router pass probability


def features(probabilities: Mapping[str, float], t1_u: float | None) -> list[float]:
    """The router's pass probabilities, then T1's confidence (0 where the task has no T1)."""
    return [float(probabilities.get(t, 0.0)) for t in TIERS] + [0.0 if t1_u is None else 1.0 - float(t1_u)]


@dataclass
class QualityModel:
    """Linear q_hat per (task, tier) and each tier's price per task in cost-ratio units."""

    weights: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # task -> tier -> [intercept, *coef]
    price: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> tier -> dollars / macro T4 dollars

    def predict(self, task: str, x: Sequence[float]) -> dict[str, float]:
        return {tier: w[0] + float(np.dot(w[1:], x)) for tier, w in self.weights[task].items()}

    def choose(self, task: str, x: Sequence[float], lam: float) -> str:
        """argmax q_hat - lam x price (ties: the cheaper); lam = inf: the cheapest tier."""
        tiers = list(self.weights[task])
        if math.isinf(lam):
            return tiers[0]
        q = self.predict(task, x)
        return max(tiers, key=lambda t: (q[t] - lam * self.price[task][t], -TIERS.index(t)))


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

    def calls(self, task: str, chosen: str, u: float) -> list[str]:
        """The tiers answering after the router chose `chosen` (its u known): it, then maybe its target."""
        target = self.target.get(task, {}).get(chosen)
        return [chosen] if target is None or u <= self.delta[task][chosen] else [chosen, target]


def _task_score(task: str, records, answers: Answers, tiers: Sequence[str]) -> float:
    from routenlp.metrics import corpus_score

    return corpus_score(task, [answers[r["id"]][t]["prediction"] for r, t in zip(records, tiers)], [r["target"] for r in records])


def calibrate_cascade(records, answers: Answers, chosen: Mapping[str, str], alphas: Mapping[str, float]) -> Cascade:
    """delta and target per (task, tier) for a routing `chosen` (id -> tier) on calibration records."""
    cascade = Cascade()
    by_task: dict[str, list] = {}
    for record in records:
        by_task.setdefault(record["task"], []).append(record)
    for task, rs in by_task.items():
        alpha, tiers = alphas[task], servable(task)
        cascade.delta[task], cascade.target[task], cascade.fit[task] = {}, {}, {}
        for k in tiers[:-1]:
            routed = [r for r in rs if chosen[r["id"]] == k]
            population, source = routed, "routed"
            if len(routed) < max(MIN_POPULATION, min_calibration_size(alpha)):
                population, source = rs, f"whole task (only {len(routed)} routed)"
            us = [float(answers[r["id"]][k]["u"]) for r in population]
            cascade.delta[task][k], cascade.target[task][k] = U_MAX, None
            cascade.fit[task][k] = {"n": len(population), "population": source, "target": None, "alpha": alpha}
            for target in tiers[tiers.index(k) + 1:]:
                regret = [min(1.0, max(0.0, float(answers[r["id"]][target]["quality"]) - float(answers[r["id"]][k]["quality"]))) for r in population]
                threshold = crc_delta(us, regret, alpha)
                escalated = [r for r, u in zip(population, us) if u > threshold.delta] or list(population)
                if _task_score(task, escalated, answers, [target] * len(escalated)) > _task_score(task, escalated, answers, [k] * len(escalated)):
                    cascade.delta[task][k], cascade.target[task][k] = threshold.delta, target
                    cascade.fit[task][k] = {**cascade.fit[task][k], "target": target, "accepted": threshold.accepted,
                                            "delta": None if math.isinf(threshold.delta) else round(threshold.delta, 6),
                                            "calibration_risk": round(threshold.calibration_risk, 4)}
                    break
    return cascade


def route(record: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]], probs: Probabilities, model: QualityModel, lam: float,
          cascade: Cascade | None) -> list[str]:
    """The tiers called for one record, in order (the last answers): T1 first on structured tasks
    (its confidence is a feature), the utility's choice, then the cascade's escalation if any."""
    task = record["task"]
    chosen = model.choose(task, record_features(record, rows, probs), lam)
    first = ["t1"] if "t1" in servable(task) and chosen != "t1" else []
    tail = [chosen] if cascade is None else cascade.calls(task, chosen, float(rows[chosen]["u"]))
    return first + tail


class UtilityRouting:
    """The quality model and, per lambda, the cascade calibrated on the calibration records that
    lambda routes to each tier (memoised: a sweep asks for many lambdas)."""

    def __init__(self, records, answers: Answers, probs: Probabilities, prices: Mapping[str, float], alphas: Mapping[str, float]) -> None:
        self.records = [r for r in records if r["id"] in answers and r["id"] in probs and all(t in answers[r["id"]] for t in servable(r["task"]))]
        self.answers, self.probs, self.alphas = answers, probs, alphas
        self.model = fit_quality_model(self.records, answers, probs, prices)
        self._cascades: dict[float, Cascade] = {}

    def cascade(self, lam: float) -> Cascade:
        if lam not in self._cascades:
            chosen = {r["id"]: self.model.choose(r["task"], record_features(r, self.answers[r["id"]], self.probs), lam) for r in self.records}
            self._cascades[lam] = calibrate_cascade(self.records, self.answers, chosen, self.alphas)
        return self._cascades[lam]
