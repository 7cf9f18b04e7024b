"""Task-stratified bootstrap of task metrics: per-task resamples of evaluation records, drawn once
and shared by every system scored on them (a paired bootstrap), and the macro average over tasks
that `routenlp bench` and the ladder table (export/ladder.py) report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

N_BOOT = 200


def task_indices(records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """task -> positions of its records, tasks sorted."""
    by_task: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_task.setdefault(record["task"], []).append(i)
    return {task: np.asarray(idx) for task, idx in sorted(by_task.items())}


def mean_quality(task_idx: Mapping[str, np.ndarray], predictions: Sequence, targets: Sequence, resample: Mapping[str, np.ndarray] | None = None) -> tuple[float, dict[str, float]]:
    """Macro average over tasks of the task metric (corpus score), optionally on resampled rows."""
    from routenlp.metrics import corpus_score

    per_task = {}
    for task, idx in task_idx.items():
        rows = idx if resample is None else idx[resample[task]]
        per_task[task] = corpus_score(task, [predictions[i] for i in rows], [targets[i] for i in rows])
    return float(np.mean(list(per_task.values()))), per_task


class Bootstrap:
    """Task-stratified resamples drawn once and shared by every system (a paired bootstrap).

    For metrics that are a mean of per-example scores (ROUGE-L, chrF, ...) each system's example
    scores are computed once and averaged per resample; decomposable corpus metrics (macro-F1,
    accuracy, clause F1, entity F1) are recomputed on each resample from summed per-example
    counts; any other metric is recomputed on the resampled records."""

    def __init__(self, task_idx: Mapping[str, np.ndarray], n_boot: int = N_BOOT, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.task_idx = task_idx
        self.resamples = [{task: rng.integers(0, len(idx), len(idx)) for task, idx in task_idx.items()} for _ in range(n_boot)]

    def per_task(self, predictions: Sequence, targets: Sequence) -> dict[str, np.ndarray]:
        """task -> [n_boot] quality of `predictions` on each resample of that task's records."""
        from routenlp.metrics import corpus_score, metric_for

        out = {}
        for task, idx in self.task_idx.items():
            metric = metric_for(task)
            task_predictions, task_targets = [predictions[i] for i in idx], [targets[i] for i in idx]
            if metric.mean_of_examples:
                scores = np.array(metric.examples(task_predictions, task_targets), dtype=float)
                out[task] = np.array([scores[r[task]].mean() for r in self.resamples])
            elif metric.decomposable:  # a resample's score from its summed per-example counts
                weights = np.stack([np.bincount(r[task], minlength=len(idx)) for r in self.resamples]).astype(float)
                out[task] = np.asarray(metric.from_counts(weights @ metric.counts(task_predictions, task_targets)), dtype=float)
            else:
                out[task] = np.array([corpus_score(task, [predictions[i] for i in idx[r[task]]], [targets[i] for i in idx[r[task]]]) for r in self.resamples])
        return out

    def qualities(self, predictions: Sequence, targets: Sequence) -> np.ndarray:
        """[n_boot] macro-average quality of `predictions` on each resample."""
        per_task = self.per_task(predictions, targets)
        return np.mean([per_task[task] for task in self.task_idx], axis=0) if per_task else np.zeros(len(self.resamples))
