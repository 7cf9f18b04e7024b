"""Conformal risk control thresholds (paper 3.2): per (task, tier), delta is the
ceil((1 - alpha)(n + 1))-th smallest uncertainty among the calibration examples the tier got right.
Escalating when u > delta then bounds Pr[wrong and accepted] at alpha under exchangeability."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from routenlp.metrics import wilson_interval


@dataclass(frozen=True)
class Threshold:
    delta: float
    n_correct: int
    n: int
    alpha: float


def conformal_delta(uncertainties: Sequence[float], correct: Sequence[bool], alpha: float = 0.05) -> Threshold:
    """delta from calibration pairs (u, correct).

    No correct example: the tier is never trusted (delta = -inf, always escalate). Fewer than
    (1 - alpha) / alpha correct examples (19 at alpha 0.05): the rank exceeds n, where textbook
    conformal gives +inf (never escalate); we take the largest correct u instead, the cautious
    choice for a tier we know little about."""
    if len(uncertainties) != len(correct):
        raise ValueError("uncertainties and correct must have the same length")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    scores = sorted(u for u, ok in zip(uncertainties, correct) if ok)
    n = len(scores)
    if n == 0:
        return Threshold(-math.inf, 0, len(correct), alpha)
    rank = math.ceil((1 - alpha) * (n + 1))
    return Threshold(scores[min(rank, n) - 1], n, len(correct), alpha)


def violation_rate(uncertainties: Sequence[float], correct: Sequence[bool], delta: float) -> tuple[float, tuple[float, float], int]:
    """Empirical Pr[wrong and accepted (u <= delta)] with its Wilson 95% interval, and n."""
    n = len(uncertainties)
    violations = sum(1 for u, ok in zip(uncertainties, correct) if not ok and u <= delta)
    return (violations / n if n else 0.0), wilson_interval(violations, n), n
