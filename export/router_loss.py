"""The router's composite loss (paper eq. 2) and its oracle tier labels.

    L = L_route + cost_weight * L_cost + quality_weight * L_quality

L_route    cross-entropy against the oracle tier (cheapest tier meeting the task's bar, else the
           cheapest tier with the best answer)
L_cost     expected normalised cost under the router's distribution: sum_k p_k * cost_k / max_k cost_k
L_quality  hinge on probability mass placed on tiers below the bar: sum_k p_k * relu(bar - q_k)
(both per example, averaged over the batch). Tiers are indexed cheapest first (T1..T4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def oracle_labels(quality: torch.Tensor, bar: torch.Tensor) -> torch.Tensor:
    """[N, K] per-tier quality, [N] bars -> [N] index of the cheapest tier with q >= bar.

    Tiers are ordered cheapest first, so ties go to the cheaper tier. When no tier meets the bar
    the label is the tier with the best answer (the cheapest of equals): paying for the priciest
    tier buys nothing when its answer is no better, e.g. every tier wrong on a classification.
    """
    quality = torch.as_tensor(quality, dtype=torch.float32)
    bar = torch.as_tensor(bar, dtype=torch.float32)
    if quality.ndim != 2 or bar.shape != quality.shape[:1]:
        raise ValueError(f"quality must be [N, K] and bar [N]; got {tuple(quality.shape)} and {tuple(bar.shape)}")
    passing = quality >= bar[:, None]
    # argmax returns the first maximal index: the cheapest passing tier, or the cheapest best one.
    first = passing.to(torch.int64).argmax(dim=1)
    best = (quality == quality.max(dim=1, keepdim=True).values).to(torch.int64).argmax(dim=1)
    return torch.where(passing.any(dim=1), first, best)


def router_loss(
    logits: torch.Tensor,
    oracle_tier: torch.Tensor,
    tier_cost: torch.Tensor,
    tier_quality: torch.Tensor,
    bar: torch.Tensor,
    cost_weight: float = 0.3,
    quality_weight: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Composite router loss.

    logits [B, K]; oracle_tier [B] (int); tier_cost [K] or [B, K] (price or per-example cost, any
    unit: it is divided by its max over tiers); tier_quality [B, K] per-example quality of each
    tier; bar [B] the example's task bar. Returns (total, {"route", "cost", "quality"}), the parts
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
    probs = logits.softmax(dim=-1)
    route = F.cross_entropy(logits, torch.as_tensor(oracle_tier, dtype=torch.long, device=logits.device))
    normalised = tier_cost / tier_cost.max(dim=-1, keepdim=True).values.clamp_min(1e-12)
    cost = (probs * normalised).sum(dim=-1).mean()
    shortfall = F.relu(bar[:, None] - tier_quality)
    quality = (probs * shortfall).sum(dim=-1).mean()
    total = route + cost_weight * cost + quality_weight * quality
    return total, {"route": route, "cost": cost, "quality": quality}
