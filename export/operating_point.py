"""Operating points of a routing system replayed over recorded tier answers: the systems' shape,
the macro scorer with its paired task-stratified bootstrap, and the knob a deployment would use
(the cheapest setting reaching MATCH_RATIO x Always-T4's quality on the pool it is fitted on).

A build step uses it to fit RouteNLP's lambda on calibration (export/calibrate.py); the bench's
curves (clients/curves.py) sweep every system with the same pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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
