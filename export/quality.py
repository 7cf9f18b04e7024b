"""From the all-pairs answers to the numbers the router and the report need: dev quality per task
and tier, effective bars and per-example quality matrices (oracle tiers: export.router_loss)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routenlp.metrics import corpus_score
from routenlp.portfolio import TIER_ORDER, Portfolio
from routenlp_core.tasks import TASK_NAMES

# A tier that cannot serve a task (T1 on generation tasks) scores below any bar.
UNSERVABLE = -1.0


def quality_table(answers: Mapping[str, Mapping[str, Mapping[str, Any]]], records: Sequence[Mapping]) -> dict[str, dict[str, float]]:
    """task -> tier -> corpus metric over `records` (answers: id -> tier -> answer dict)."""
    table: dict[str, dict[str, float]] = {}
    for task in TASK_NAMES:
        task_records = [r for r in records if r["task"] == task]
        table[task] = {}
        for tier in TIER_ORDER:
            rows = [answers[r["id"]].get(tier) for r in task_records]
            if not task_records or any(row is None for row in rows):
                continue
            table[task][tier] = round(corpus_score(task, [row["prediction"] for row in rows], [r["target"] for r in task_records]), 4)
    return table


def effective_bars(portfolio: Portfolio, dev_quality: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {task: round(portfolio.tasks[task].effective_bar(dev_quality[task]), 4) for task in TASK_NAMES}


def quality_matrix(answers: Mapping[str, Mapping[str, Mapping[str, Any]]], records: Sequence[Mapping], bars: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """([N, 4] per-example quality, [N] per-example bar) in TIER_ORDER."""
    quality = np.array(
        [[answers[r["id"]][tier]["quality"] if tier in answers[r["id"]] else UNSERVABLE for tier in TIER_ORDER] for r in records],
        dtype=np.float32,
    )
    return quality, np.array([bars[r["task"]] for r in records], dtype=np.float32)

