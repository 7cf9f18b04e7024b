"""Conformal risk control (Angelopoulos et al., 2022) for the cascade's acceptance threshold.

Accepting an answer with uncertainty u when u <= delta costs L_i(delta) = 1[u_i <= delta] * l_i,
where l_i in [0, B] is what accepting answer i loses (here: the quality its escalation target
would have added). L is non-decreasing in delta, so with n exchangeable calibration answers

    delta = max{ delta : (sum_i L_i(delta) + B) / (n + 1) <= alpha }

gives E[L_{n+1}(delta)] <= alpha for a new answer from the same population. When no delta
qualifies (even accepting nothing: B / (n + 1) > alpha, i.e. n < B / alpha - 1), delta = -inf:
always escalate. When every delta does, delta = U_MAX: accept everything (u never exceeds 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from routenlp_core.stats import wilson_interval

U_MAX = 1.0  # uncertainties are 1 - max prob or mean(1 - p(token)): never above 1


@dataclass(frozen=True)
class Threshold:
    delta: float
    n: int
    alpha: float
    calibration_risk: float  # mean L_i(delta) over the n calibration answers
    accepted: int  # calibration answers with u <= delta


def crc_delta(uncertainties: Sequence[float], losses: Sequence[float], alpha: float, bound: float = 1.0) -> Threshold:
    """The largest delta whose conformal risk bound (sum of accepted losses + B) / (n + 1) is <= alpha.

    Answers with equal u are accepted or escalated together (delta is one of the u values)."""
    if len(uncertainties) != len(losses):
        raise ValueError("uncertainties and losses must have the same length")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if any(not 0.0 <= loss <= bound for loss in losses):
        raise ValueError(f"losses must lie in [0, {bound}]")
    n = len(uncertainties)
    if n == 0 or bound / (n + 1) > alpha:
        return Threshold(-math.inf, n, alpha, 0.0, 0)
    pairs = sorted(zip(uncertainties, losses))
    delta, total, accepted, kept = -math.inf, 0.0, 0, 0.0
    i = 0
    while i < n:
        u = pairs[i][0]
        while i < n and pairs[i][0] == u:  # the whole tie group at once
            total += pairs[i][1]
            i += 1
        if (total + bound) / (n + 1) > alpha:
            break
        delta, accepted, kept = u, i, total
    if accepted == n:
        delta = max(delta, U_MAX)  # everything qualifies: accept any u
    return Threshold(delta, n, alpha, kept / n, accepted)


def min_calibration_size(alpha: float, bound: float = 1.0) -> int:
    """The smallest n at which accepting anything can be certified: (0 + B) / (n + 1) <= alpha."""
    return max(0, math.ceil(bound / alpha - 1 - 1e-12))


@dataclass(frozen=True)
class RiskCheck:
    n: int
    risk: float  # mean loss over the population (losses of escalated answers count 0)
    wilson: tuple[float, float]  # 95%; for losses in [0, 1] the binomial variance bounds theirs

    def status(self, alpha: float) -> str:
        if self.n == 0:
            return "no data"
        if self.wilson[0] > alpha:
            return "VIOLATED"  # even the optimistic end of the interval exceeds alpha
        return "ok" if self.risk <= alpha else "above alpha (within CI)"


def realised_risk(losses: Sequence[float]) -> RiskCheck:
    """Mean realised loss of a served population with its Wilson 95% interval."""
    n = len(losses)
    total = float(sum(losses))
    return RiskCheck(n, total / n if n else 0.0, wilson_interval(total, n))
