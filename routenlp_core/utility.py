"""RouteNLP's cost-aware choice of tier, as served and as replayed offline.

Per request: the servable tier with the highest predicted quality minus lambda x its price,
q_hat(task, tier | x) - lambda x price(task, tier). q_hat is linear in the features x: the router's
pass probabilities of the four tiers (TIERS order), then T1's own confidence 1 - u on structured
tasks (T1 answers first there: it costs ~1/800 of T4), 0 elsewhere. Prices are in cost-ratio units
(a tier's mean billed dollars on the task's calibration answers over the macro mean of T4's), so
lambda reads as "quality points per cost-ratio point". The build fits the weights, the prices and
lambda (export/utility_router.py, export/calibrate.py); the serving config carries them
(calibration.utility); this module only applies them, in plain Python, for the BLS and the replays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from routenlp_core.contract import TIERS

N_FEATURES = len(TIERS) + 1


def features(probabilities: Mapping[str, float], t1_u: float | None) -> list[float]:
    """The router's pass probabilities, then T1's confidence (0 where T1 did not answer)."""
    return [float(probabilities.get(t, 0.0)) for t in TIERS] + [0.0 if t1_u is None else 1.0 - float(t1_u)]


def predict(weights: Mapping[str, Sequence[float]], x: Sequence[float]) -> dict[str, float]:
    """q_hat per tier: intercept + coefficients . x."""
    return {tier: w[0] + sum(c * v for c, v in zip(w[1:], x)) for tier, w in weights.items()}


def choose_tier(weights: Mapping[str, Sequence[float]], price: Mapping[str, float], x: Sequence[float], lam: float,
                allowed: Sequence[str] | None = None) -> str:
    """argmax q_hat - lam x price over `allowed` (default: every tier with weights), ties to the
    cheaper tier; lam = inf: the cheapest tier."""
    tiers = sorted((t for t in weights if allowed is None or t in allowed), key=TIERS.index)
    if not tiers:
        raise ValueError(f"no tier with weights among {list(allowed or [])}")
    if math.isinf(lam):
        return tiers[0]
    q = predict({t: weights[t] for t in tiers}, x)
    return max(tiers, key=lambda t: (q[t] - lam * price[t], -TIERS.index(t)))


@dataclass(frozen=True)
class UtilityRule:
    """What the serving config carries: lambda, and per task and tier the weights and the price."""

    lam: float
    weights: Mapping[str, Mapping[str, Sequence[float]]]  # task -> tier -> [intercept, *coefficients]
    price: Mapping[str, Mapping[str, float]]  # task -> tier -> price in cost-ratio units

    def choose(self, task: str, x: Sequence[float], allowed: Sequence[str] | None = None) -> str:
        return choose_tier(self.weights[task], self.price[task], x, self.lam, allowed)

    def serves(self, task: str) -> bool:
        return task in self.weights

    def to_json(self) -> dict[str, Any]:
        return {"lambda": None if math.isinf(self.lam) else self.lam, "features": [*(f"p_{t}" for t in TIERS), "t1_confidence"],
                "weights": {task: {t: list(w) for t, w in by.items()} for task, by in self.weights.items()},
                "price": {task: dict(by) for task, by in self.price.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UtilityRule:
        """Raises ValueError naming what is wrong."""
        lam = math.inf if data.get("lambda") is None else float(data["lambda"])
        if lam < 0 or math.isnan(lam):
            raise ValueError(f"lambda {data.get('lambda')!r} must be >= 0")
        weights = {str(task): {str(t): [float(v) for v in w] for t, w in by.items()} for task, by in data["weights"].items()}
        price = {str(task): {str(t): float(v) for t, v in by.items()} for task, by in data["price"].items()}
        for task, by in weights.items():
            for tier, w in by.items():
                if tier not in TIERS or len(w) != N_FEATURES + 1 or not all(math.isfinite(v) for v in w):
                    raise ValueError(f"weights.{task}.{tier}: a tier of {', '.join(TIERS)} with {N_FEATURES + 1} finite numbers")
                if tier not in price.get(task, {}) or price[task][tier] < 0:
                    raise ValueError(f"price.{task}.{tier}: a non-negative price for every tier with weights")
        return cls(lam, weights, price)
