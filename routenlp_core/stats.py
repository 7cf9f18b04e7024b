"""Interval helpers for calibration (violation rates) and evaluation (score uncertainty)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion successes/n.

    Chosen over the normal (Wald) interval because calibration counts are small and rates sit near
    0 (violations) or 1 (coverage), where Wald collapses to a zero-width interval.
    n == 0 means no evidence at all, so the interval is the whole range (0.0, 1.0).
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # Clamp: at 0/n and n/n the bound is exactly 0 or 1 on paper but off by rounding in floats.
    return max(0.0, center - half_width), min(1.0, center + half_width)


def bootstrap_ci(
    values: Sequence[float],
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of stat(values); seeded so reports are reproducible."""
    sample = np.asarray(values, dtype=float)
    if sample.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if n_boot < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need n_boot >= 1 and 0 < confidence < 1, got {n_boot}, {confidence}")
    rng = np.random.default_rng(seed)
    resample_indices = rng.integers(0, sample.size, size=(n_boot, sample.size))
    boot_stats = np.array([stat(sample[idx]) for idx in resample_indices], dtype=float)
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(boot_stats, [tail, 100.0 - tail])
    return float(lo), float(hi)
