"""The router's composite loss and its labels: per tier, will this tier's answer be good enough?

The router has one logit per tier (cheapest first); sigmoid(logit_k) is its predicted probability
that tier k meets the example's bar. Serving takes the cheapest allowed tier whose probability
reaches gamma (bls_router.service.cheapest_confident_tier), so the router must be calibrated per
tier rather than pick one winner.

    L = L_route + cost_weight * L_cost + quality_weight * L_quality

L_route    binary cross-entropy of each tier's logit against "tier k meets the bar" (mean over tiers)
L_cost     savings missed: sum_k y_k * (1 - p_k) * (1 - cost_k / max cost), where y_k says tier k
           passes; doubting a cheap tier that would have passed sends the query somewhere pricier
L_quality  quality risked: sum_k p_k * relu(bar - q_k), confidence placed on tiers below the bar
(both per example, averaged over the batch).

The bar is per example: the task's bar for structured tasks (accuracy / F1 against a fixed level),
and T4's own quality minus T4_TOLERANCE for generation tasks, where a corpus-wide chrF bar turns
per-example labels into coin flips; "as good as the frontier tier on this query" is what a cheaper
generation answer has to be.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# Per-example quality a generation answer may trail T4's by and still count as good enough.
T4_TOLERANCE = 0.02


def example_bars(records: Sequence[Mapping], quality, task_bars: Mapping[str, float], tolerance: float = T4_TOLERANCE) -> np.ndarray:
    """[N] per-example bar: the task's bar (structured tasks) or the top tier's quality on the
    example minus `tolerance` (generation tasks); quality is [N, K], cheapest tier first."""
    from routenlp_core.tasks import get_task

    quality = np.asarray(quality, dtype=np.float32)
    if quality.ndim != 2 or len(records) != quality.shape[0]:
        raise ValueError(f"quality must be [{len(records)}, K], got {quality.shape}")
    return np.array(
        [task_bars[r["task"]] if get_task(r["task"]).structured else quality[i, -1] - tolerance for i, r in enumerate(records)],
        dtype=np.float32,
    )


def passing_labels(quality: torch.Tensor, bar: torch.Tensor) -> torch.Tensor:
    """[N, K] quality, [N] bars -> [N, K] float 1.0 where tier k meets the example's bar."""
    quality = torch.as_tensor(quality, dtype=torch.float32)
    bar = torch.as_tensor(bar, dtype=torch.float32)
    if quality.ndim != 2 or bar.shape != quality.shape[:1]:
        raise ValueError(f"quality must be [N, K] and bar [N]; got {tuple(quality.shape)} and {tuple(bar.shape)}")
    return (quality >= bar[:, None]).to(torch.float32)


def oracle_labels(quality: torch.Tensor, bar: torch.Tensor) -> torch.Tensor:
    """[N, K] per-tier quality, [N] bars -> [N] index of the cheapest tier with q >= bar.

    Tiers are ordered cheapest first, so ties go to the cheaper tier. When no tier meets the bar
    the label is the tier with the best answer (the cheapest of equals): paying for the priciest
    tier buys nothing when its answer is no better, e.g. every tier wrong on a classification.
    """
    quality = torch.as_tensor(quality, dtype=torch.float32)
    passing = passing_labels(quality, bar).to(torch.int64)
    # argmax returns the first maximal index: the cheapest passing tier, or the cheapest best one.
    first = passing.argmax(dim=1)
    best = (quality == quality.max(dim=1, keepdim=True).values).to(torch.int64).argmax(dim=1)
    return torch.where(passing.any(dim=1).bool(), first, best)


def router_loss(
    logits: torch.Tensor,
    tier_cost: torch.Tensor,
    tier_quality: torch.Tensor,
    bar: torch.Tensor,
    cost_weight: float = 0.3,
    quality_weight: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Composite router loss.

    logits [B, K]; tier_cost [K] or [B, K] (price or per-example cost, any unit: it is divided by
    its max over tiers); tier_quality [B, K] per-example quality of each tier; bar [B] the
    example's bar (example_bars). Returns (total, {"route", "cost", "quality"}), the parts
    unweighted (still attached to the graph; call .item() to log them).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, K], got {tuple(logits.shape)}")
    batch, tiers = logits.shape
    tier_cost = torch.as_tensor(tier_cost, dtype=logits.dtype, device=logits.device)
    tier_quality = torch.as_tensor(tier_quality, dtype=logits.dtype, device=logits.device)
    bar = torch.as_tensor(bar, dtype=logits.dtype, device=logits.device)
    if tier_cost.shape not in ((tiers,), (batch, tiers)):
        raise ValueError(f"tier_cost must be [{tiers}] or [{batch}, {tiers}], got {tuple(tier_cost.shape)}")
    if tier_quality.shape != (batch, tiers) or bar.shape != (batch,):
        raise ValueError(f"tier_quality must be [{batch}, {tiers}] and bar [{batch}]")
    passing = passing_labels(tier_quality, bar).to(logits.dtype)
    probs = logits.sigmoid()
    route = F.binary_cross_entropy_with_logits(logits, passing)
    saving = 1.0 - tier_cost / tier_cost.max(dim=-1, keepdim=True).values.clamp_min(1e-12)
    cost = (passing * (1.0 - probs) * saving).sum(dim=-1).mean()
    shortfall = F.relu(bar[:, None] - tier_quality)
    quality = (probs * shortfall).sum(dim=-1).mean()
    total = route + cost_weight * cost + quality_weight * quality
    return total, {"route": route, "cost": cost, "quality": quality}
