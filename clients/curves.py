"""Cost-quality curves of every routing system, replayed offline over per-record tier answers.

Each system is a decision rule with one knob (a threshold, a budget share or gamma). Its decisions
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
from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.baselines import servable

MATCH_RATIO = 0.97
GRID = tuple(round(x, 2) for x in np.linspace(0.0, 1.0, 21))

Table = Mapping[str, Mapping[str, Mapping[str, Any]]]  # id -> tier -> {prediction, u, tokens, dollars, quality}
Decide = Callable[[Mapping[str, Any], Mapping[str, Mapping[str, Any]], float], Sequence[str]]  # (record, rows, knob) -> tiers called


@dataclass(frozen=True)
class System:
    name: str
    decide: Decide  # the tiers called for a record at a knob setting; the last one answers
    grid: Sequence[float] = GRID


@dataclass(frozen=True)
class Point:
    knob: float
    tiers: tuple[str, ...]  # per record, the answering tier
    dollars: np.ndarray  # per record


def table_from_answers(answers: Table, prices: Mapping[str, float]) -> dict[str, dict[str, dict[str, Any]]]:
    """A build's labelled answers as a curve table (dollars from tokens x price)."""
    return {rid: {tier: {**row, "dollars": int(row.get("tokens", 0)) / 1000.0 * prices[tier]} for tier, row in by_tier.items()} for rid, by_tier in answers.items()}


def replay_system(system: System, records: Sequence[Mapping[str, Any]], table: Table) -> list[Point]:
    points = []
    for knob in system.grid:
        tiers, dollars = [], []
        for record in records:
            rows = table[record["id"]]
            called = [t for t in system.decide(record, rows, knob) if t in rows]
            tiers.append(called[-1])
            dollars.append(sum(float(rows[t]["dollars"]) for t in called))
        points.append(Point(float(knob), tuple(tiers), np.asarray(dollars)))
    return points


class Scorer:
    """Macro quality over tasks of a per-record tier choice, on the records and on shared
    task-stratified resamples (a paired bootstrap), memoised per choice (many knob settings make
    the same decisions). Metrics that are a mean of example scores average the table's stored
    per-example quality; the others (macro-F1, entity F1) are scored again per resample."""

    def __init__(self, records, table: Table, n_boot: int, seed: int) -> None:
        from routenlp.metrics.task_bootstrap import task_indices

        self.records, self.table = records, table
        self.task_idx = task_indices(records)
        rng = np.random.default_rng(seed)
        self.resamples = [{task: rng.integers(0, len(idx), len(idx)) for task, idx in self.task_idx.items()} for _ in range(n_boot)]
        self._memo: dict[tuple[tuple[str, ...], bool], tuple[float, np.ndarray]] = {}

    def quality(self, tiers: Sequence[str], boot: bool = True) -> tuple[float, np.ndarray]:
        key = (tuple(tiers), boot)
        if key not in self._memo:
            self._memo[key] = self._score(tiers, boot)
        return self._memo[key]

    def _score(self, tiers, boot: bool) -> tuple[float, np.ndarray]:
        from routenlp.metrics import corpus_score, metric_for

        main, per_resample = [], np.zeros((len(self.resamples) if boot else 0, len(self.task_idx)))
        for column, (task, idx) in enumerate(self.task_idx.items()):
            rows = [self.table[self.records[i]["id"]][tiers[i]] for i in idx]
            if metric_for(task).mean_of_examples:
                scores = np.array([float(row["quality"]) for row in rows])
                main.append(float(scores.mean()))
                if boot:
                    per_resample[:, column] = [scores[r[task]].mean() for r in self.resamples]
                continue
            predictions, targets = [row["prediction"] for row in rows], [self.records[i]["target"] for i in idx]
            main.append(corpus_score(task, predictions, targets))
            if boot:
                per_resample[:, column] = [corpus_score(task, [predictions[j] for j in r[task]], [targets[j] for j in r[task]]) for r in self.resamples]
        return float(np.mean(main)), per_resample.mean(axis=1)

    def cost(self, dollars: np.ndarray) -> tuple[float, np.ndarray]:
        """Macro over tasks, as the quality is; and per resample."""
        whole = float(np.mean([dollars[idx].mean() for idx in self.task_idx.values()]))
        boot = np.array([np.mean([dollars[idx[r[t]]].mean() for t, idx in self.task_idx.items()]) for r in self.resamples])
        return whole, boot


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


def choose_knob(system: System, records, table: Table, ratio: float = MATCH_RATIO) -> tuple[float, dict[str, float]]:
    """The operating point to serve, fitted on calibration data: the cheapest setting whose quality
    ratio to Always-T4 is >= ratio there, else the best quality."""
    scorer = Scorer(records, table, 0, 0)
    t4 = scorer.quality(["t4"] * len(records), boot=False)[0]
    rows = []
    for point in replay_system(system, records, table):
        quality = scorer.quality(point.tiers, boot=False)[0]
        rows.append((point.knob, quality / t4 if t4 else 0.0, float(point.dollars.mean())))
    meeting = [r for r in rows if r[1] >= ratio]
    knob, q, cost = min(meeting, key=lambda r: (r[2], -r[1])) if meeting else max(rows, key=lambda r: (r[1], -r[2]))
    return knob, {"knob": knob, "fit_quality_ratio": round(q, 4), "fit_dollars": round(cost, 6), "met": bool(meeting)}


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
             grid: Sequence[float] | None = None) -> System:
    """RouteNLP (export.utility_router): the cost-aware utility at lambda = knob, then the
    cascade step calibrated for that lambda; grid from free (0) to the cheapest tier (1e6)."""
    from export.utility_router import LAMBDA_GRID, route

    def decide(record, rows, knob):
        return route(record, rows, probabilities, routing.model, knob, routing.cascade(knob) if cascade else None)

    return System(name, decide, tuple(grid or LAMBDA_GRID))


def quantile_grid(scores: Sequence[float], n: int = 41) -> tuple[float, ...]:
    """Knob settings that span a score's range on calibration (its quantiles, and one setting
    above the top so the curve reaches the priciest end): a fixed 0..1 grid leaves a score
    bunched in a corner flat over most of the knob."""
    values = np.quantile(np.asarray(scores, dtype=float), np.linspace(0.0, 1.0, n))
    return tuple(sorted({round(float(v), 6) for v in values} | {0.0, round(float(np.max(scores)) + 1e-6, 6)}))
