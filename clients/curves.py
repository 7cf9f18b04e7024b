"""Cost-quality curves of every routing system, replayed offline over per-record tier answers.

Each system is a decision rule with one knob (a threshold, a budget share or lambda). Its decisions
are replayed over the same per-record answers of every tier (the bench's served Always-tK answers,
or a build's labelled answers), so a sweep needs no server pass per setting; the chosen operating
points are then served by the bench. A table row per record and tier: prediction, u, tokens,
dollars, quality (per-example score).

Headline: per system, the cheapest setting whose quality ratio to Always-T4 is >= MATCH_RATIO,
with a paired, task-stratified bootstrap CI of its cost difference to RouteNLP (each resample
re-picks every system's cheapest qualifying setting).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from clients.baselines import servable
from export.operating_point import (
    GRID,
    MATCH_RATIO,
    Point,
    Scorer,
    System,
    Table,
    choose_knob,
    replay_system,
    table_from_answers,
)

__all__ = ["GRID", "MATCH_RATIO", "Point", "Scorer", "System", "Table", "choose_knob", "replay_system", "table_from_answers"]


def sweep(systems: Sequence[System], records: Sequence[Mapping[str, Any]], table: Table, n_boot: int = 100, seed: int = 0, reference: str = "routenlp") -> dict[str, Any]:
    """Curves (cost ratio, quality ratio per setting), the matched-quality headline and paired CIs."""
    scorer = Scorer(records, table, n_boot, seed)
    t4_quality, t4_boot = scorer.quality(["t4"] * len(records))
    t4_cost, t4_boot_cost = scorer.cost(np.asarray([float(table[r["id"]]["t4"]["dollars"]) for r in records]))
    curves, best_boot = {}, {}
    for system in systems:
        curve, boot_q, boot_c = [], [], []
        for point in replay_system(system, records, table):
            quality, q_boot = scorer.quality(point.tiers)
            cost, c_boot = scorer.cost(point.dollars)
            curve.append({"knob": point.knob, "quality_ratio": round(quality / t4_quality, 4), "cost_ratio": round(cost / t4_cost, 5)})
            boot_q.append(q_boot)
            boot_c.append(c_boot)
        meeting = [c for c in curve if c["quality_ratio"] >= MATCH_RATIO]
        ratios = np.where(np.asarray(boot_q) / t4_boot[None, :] >= MATCH_RATIO, np.asarray(boot_c) / t4_boot_cost[None, :], np.inf)
        best_boot[system.name] = ratios.min(axis=0)  # per resample, the cheapest setting that matches
        curves[system.name] = {"curve": curve, "matched": min(meeting, key=lambda c: c["cost_ratio"]) if meeting else None}
    headline = []
    ours = best_boot.get(reference)
    for name, entry in curves.items():
        row = {"name": name, "cost_ratio_at_match": None if entry["matched"] is None else entry["matched"]["cost_ratio"],
               "knob": None if entry["matched"] is None else entry["matched"]["knob"]}
        if ours is not None and name != reference:
            diff = best_boot[name] - ours  # positive: the peer costs more than RouteNLP at matched quality
            finite = np.isfinite(diff)
            row["diff_vs_routenlp_ci95"] = [round(float(x), 5) for x in np.percentile(diff[finite], [2.5, 97.5])] if finite.mean() >= 0.5 else None
            row["resamples_both_matched"] = round(float(finite.mean()), 3)
        headline.append(row)
    return {"match_ratio": MATCH_RATIO, "reference": "always-t4", "n_boot": n_boot, "curves": curves, "headline": headline}


# ---------------------------------------------------------------- the systems' decision rules


def fixed(tier: str) -> System:
    return System(f"always-{tier}", lambda record, rows, knob: [tier if tier in servable(record["task"]) else servable(record["task"])[0]], (0.0,))


def random_matched(seed: int = 0) -> System:
    """T4 with probability knob, else the cheapest tier; one seeded draw per record, shared by all knobs."""

    def decide(record, rows, knob):
        draw = np.random.default_rng([seed, int.from_bytes(str(record["id"]).encode()[-8:], "little")]).random()
        return ["t4" if draw < knob else servable(record["task"])[0]]

    return System("random (matched cost)", decide, tuple(sorted({*GRID, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04})))


def rule_by_task(tier_by_task: Mapping[str, str]) -> System:
    return System("rule-by-task", lambda record, rows, knob: [tier_by_task[record["task"]]], (0.0,))


def pass_router(name: str, probabilities: Callable[[Mapping[str, Any]], Mapping[str, float]], tiers: Sequence[str] | None = None,
                grid: Sequence[float] = GRID) -> System:
    """Cheapest tier (of `tiers`, default all servable) whose predicted pass probability >= knob,
    else the last one: RouteLLM / HybridLLM, binary (T2, T4) or 4-tier."""

    def decide(record, rows, knob):
        p = probabilities(record)
        chain = [t for t in (tiers or servable(record["task"])) if t in servable(record["task"])]
        return [next((t for t in chain[:-1] if p[t] >= knob), chain[-1])]

    return System(name, decide, tuple(grid))


def scored_cascade(name: str, chain: Callable[[str], Sequence[str]], score: Callable[[Mapping[str, Any], str, float, int], float],
                   grid: Sequence[float] = GRID) -> System:
    """FrugalGPT / AutoMix: call tiers in order, stop at the first answer scoring >= knob."""

    def decide(record, rows, knob):
        called = []
        tiers = [t for t in chain(record["task"]) if t in rows]
        for i, tier in enumerate(tiers):
            called.append(tier)
            if i < len(tiers) - 1 and score(record, tier, float(rows[tier]["u"]), int(rows[tier].get("tokens", 0))) >= knob:
                break
        return called

    return System(name, decide, tuple(grid))


def routenlp(routing, probabilities: Mapping[str, Mapping[str, float]], name: str = "routenlp", cascade: bool = True,
             grid: Sequence[float] | None = None, provisional: bool = False) -> System:
    """RouteNLP (export.utility_router): the cost-aware utility at lambda = knob, then the
    cascade step calibrated for that lambda; grid from free (0) to the cheapest tier (1e6).
    provisional: the fit part's own cascade, what lambda is chosen with (never what is served)."""
    from export.utility_router import LAMBDA_GRID

    def decide(record, rows, knob):
        return routing.route(record, rows, probabilities, knob, cascade, provisional)

    return System(name, decide, tuple(grid or LAMBDA_GRID))


def quantile_grid(scores: Sequence[float], n: int = 41) -> tuple[float, ...]:
    """Knob settings that span a score's range on calibration (its quantiles, and one setting
    above the top so the curve reaches the priciest end): a fixed 0..1 grid leaves a score
    bunched in a corner flat over most of the knob."""
    values = np.quantile(np.asarray(scores, dtype=float), np.linspace(0.0, 1.0, n))
    return tuple(sorted({round(float(v), 6) for v in values} | {0.0, round(float(np.max(scores)) + 1e-6, 6)}))
