"""Conformal risk control (Angelopoulos et al., 2022) and Learn then Test (Angelopoulos et al., 2021)
for the cascade's acceptance threshold.

Accepting an answer with uncertainty u when u <= delta costs L_i(delta) = 1[u_i <= delta] * l_i,
where l_i in [0, B] is what accepting answer i loses (here: the quality its escalation target
would have added). L is non-decreasing in delta, so with n exchangeable calibration answers

    delta = max{ delta : (sum_i L_i(delta) + B) / (n + 1) <= alpha }

gives E[L_{n+1}(delta)] <= alpha for a new answer from the same population. When no delta
qualifies (even accepting nothing: B / (n + 1) > alpha, i.e. n < B / alpha - 1), delta = -inf:
always escalate. When every delta does, delta = U_MAX: accept everything (u never exceeds 1).

CRC's bound holds on average over calibration draws; ltt_delta's holds for all but a share epsilon
of them (a high-probability bound: the cascade serves one calibration draw, not their average).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from routenlp_core.stats import wilson_interval

U_MAX = 1.0  # uncertainties are 1 - max prob or mean(1 - p(token)): never above 1


@dataclass(frozen=True)
class Threshold:
    delta: float
    n: int
    alpha: float
    calibration_risk: float  # mean L_i(delta) over the n calibration answers
    accepted: int  # calibration answers with u <= delta


def _check_inputs(uncertainties: Sequence[float], losses: Sequence[float], alpha: float, bound: float) -> None:
    if len(uncertainties) != len(losses):
        raise ValueError("uncertainties and losses must have the same length")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if any(not 0.0 <= loss <= bound for loss in losses):
        raise ValueError(f"losses must lie in [0, {bound}]")


def crc_delta(uncertainties: Sequence[float], losses: Sequence[float], alpha: float, bound: float = 1.0) -> Threshold:
    """The largest delta whose conformal risk bound (sum of accepted losses + B) / (n + 1) is <= alpha.

    Answers with equal u are accepted or escalated together (delta is one of the u values)."""
    _check_inputs(uncertainties, losses, alpha, bound)
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


def wsr_p_value(losses: np.ndarray, alpha: float, epsilon: float) -> float:
    """p-value of H0 "mean loss >= alpha" for losses in [0, 1] taken in an order independent of
    them: 1 / max_i K_i with the Waudby-Smith--Ramdas betting capital K_i = prod_j (1 - nu_j (L_j -
    alpha)) (a nonnegative supermartingale under H0, so Ville's inequality makes it valid), nu_j
    predictable from L_1..L_{j-1} as in Bates et al. (2021), "Distribution-free, risk-controlling
    prediction sets", Sec. 3.1. It is far tighter than Hoeffding-Bentkus for low-variance losses
    (small quality differences of generated text)."""
    n = len(losses)
    if n == 0:
        return 1.0
    seen = np.arange(1, n + 1)
    mu = (0.5 + np.cumsum(losses)) / (seen + 1)
    var = (0.25 + np.cumsum((losses - mu) ** 2)) / (seen + 1)
    prior_var = np.concatenate(([0.25], var[:-1]))  # nu_j sees only L_1..L_{j-1}
    nu = np.minimum(1.0, np.sqrt(2 * math.log(1 / epsilon) / (n * prior_var)))
    log_capital = np.cumsum(np.log1p(-nu * (losses - alpha)))
    return float(min(1.0, math.exp(-log_capital.max())))


def ltt_delta(uncertainties: Sequence[float], losses: Sequence[float], alpha: float, epsilon: float, seed: int = 0) -> Threshold:
    """Learn then Test (Angelopoulos et al., 2021) with fixed-sequence testing: the largest delta such
    that H0 "risk(delta') > alpha" is rejected at level epsilon for every candidate delta' <= delta,
    scanning the u values upward (risk is non-decreasing in delta). Then P(risk(delta) <= alpha) >=
    1 - epsilon over the calibration draw, where risk is the population mean of 1[u <= delta] x loss.
    The answers are taken in a seeded random order for the betting p-value (wsr_p_value)."""
    _check_inputs(uncertainties, losses, alpha, 1.0)
    if not 0 < epsilon < 1:
        raise ValueError("epsilon must be in (0, 1)")
    u = np.asarray(uncertainties, dtype=float)
    loss = np.asarray(losses, dtype=float)
    n = len(u)
    order = np.random.default_rng(seed).permutation(n)
    u, loss = u[order], loss[order]
    delta, accepted, kept = -math.inf, 0, 0.0
    for candidate in np.unique(u):
        accept = u <= candidate
        taken = np.where(accept, loss, 0.0)
        if wsr_p_value(taken, alpha, epsilon) > epsilon:
            break  # fixed sequence: the first null not rejected ends the scan
        delta, accepted, kept = float(candidate), int(accept.sum()), float(taken.sum())
    if n and accepted == n:
        delta = max(delta, U_MAX)
    return Threshold(delta, n, alpha, kept / n if n else 0.0, accepted)


@functools.lru_cache(maxsize=64)  # asked per task at every lambda of a sweep; the LTT case is a search
def min_calibration_size(alpha: float, bound: float = 1.0, epsilon: float | None = None) -> int:
    """The smallest n at which accepting anything can be certified: CRC, (0 + B) / (n + 1) <= alpha;
    LTT (epsilon given), n answers with zero loss reject H0 at level epsilon."""
    if epsilon is None:
        return max(0, math.ceil(bound / alpha - 1 - 1e-12))
    n = 1
    while wsr_p_value(np.zeros(n), alpha, epsilon) > epsilon:
        n += 1
    return n


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
