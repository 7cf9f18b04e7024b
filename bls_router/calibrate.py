"""Conformal thresholds for the cascade from a build's calibration answers, and their check on dev.

delta[task][tier] = conformal_delta(u, correct, alpha) over the calibration pool, where an answer is
correct when its per-example quality reaches the task's effective bar (the bar the router was
trained against). Only tiers that can escalate (t1-t3) get a threshold: a T4 answer is final.

The empirical violation rate Pr[wrong and accepted (u <= delta)] is then measured on the dev pool,
with a Wilson 95% interval, per (task, tier). `routenlp calibrate` prints that table and writes the
thresholds into a new version of the `routenlp` model (atomic: the version folder is assembled
beside its final place and renamed in), which Triton loads with
POST /v2/repository/models/routenlp/load while the old version keeps serving.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bls_router.cascade import TIERS
from bls_router.conformal import conformal_delta, violation_rate

ESCALATING_TIERS = TIERS[:-1]
CALIBRATION_POOL = "calibration"
BLS_MODEL = "routenlp"

Answers = Mapping[str, Mapping[str, Mapping[str, Any]]]  # id -> tier -> {task, u, quality, ...}


class CalibrationUnavailable(RuntimeError):
    """The build has no calibration answers (or the repository no routenlp model) to work from."""


@dataclass(frozen=True)
class CheckRow:
    task: str
    tier: str
    delta: float
    n_calibration: int
    n_correct: int
    n_dev: int
    violation: float
    wilson: tuple[float, float]
    escalation_rate: float  # share of dev answers with u > delta

    def status(self, alpha: float) -> str:
        if self.n_dev == 0:
            return "no dev data"
        if self.wilson[0] > alpha:
            return "VIOLATED"  # even the optimistic end of the interval exceeds alpha
        return "ok" if self.violation <= alpha else "above alpha (within CI)"

    def as_table_row(self, alpha: float) -> dict[str, str]:
        return {
            "task": self.task,
            "tier": self.tier,
            "n_cal": str(self.n_calibration),
            "correct": str(self.n_correct),
            "delta": "-inf" if math.isinf(self.delta) else f"{self.delta:.4f}",
            "n_dev": str(self.n_dev),
            "violation": f"{self.violation:.3f}",
            "wilson95": f"[{self.wilson[0]:.3f}, {self.wilson[1]:.3f}]",
            "escalate": f"{self.escalation_rate:.2f}",
            "status": self.status(alpha),
        }


def scores_by_task_tier(answers: Answers, bars: Mapping[str, float]) -> dict[tuple[str, str], tuple[list[float], list[bool]]]:
    """(task, tier) -> (uncertainties, correct flags), correct meaning quality >= the task's bar."""
    table: dict[tuple[str, str], tuple[list[float], list[bool]]] = {}
    for by_tier in answers.values():
        for tier, row in by_tier.items():
            task = row["task"]
            if task not in bars:
                continue
            us, oks = table.setdefault((task, tier), ([], []))
            us.append(float(row["u"]))
            oks.append(float(row["quality"]) >= bars[task])
    return table


def thresholds_from_answers(
    answers: Answers, bars: Mapping[str, float], alpha: float
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, int]]]]:
    """delta[task][tier] for t1-t3 and the (n, correct) counts behind each."""
    thresholds: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for (task, tier), (us, oks) in sorted(scores_by_task_tier(answers, bars).items()):
        if tier not in ESCALATING_TIERS:
            continue
        threshold = conformal_delta(us, oks, alpha)
        thresholds.setdefault(task, {})[tier] = threshold.delta
        counts.setdefault(task, {})[tier] = {"n": threshold.n, "correct": threshold.n_correct}
    return thresholds, counts


def calibrate_build(build, alpha: float = 0.05, bars: Mapping[str, float] | None = None) -> tuple[dict, dict]:
    """(thresholds, calibration record) from `build`'s calibration answers."""
    from bls_router.serving_config import effective_bars

    path = build.root / "answers" / f"{CALIBRATION_POOL}.jsonl"
    if not path.exists():
        raise CalibrationUnavailable(f"{path} not found: build the portfolio first (`routenlp export --profile {build.profile.name}`)")
    bars = dict(bars) if bars is not None else effective_bars(build)
    thresholds, counts = thresholds_from_answers(build.load_answers(CALIBRATION_POOL), bars, alpha)
    if not thresholds:
        raise CalibrationUnavailable(f"{path} holds no answers of tiers {', '.join(ESCALATING_TIERS)}")
    answers = build.load_answers(CALIBRATION_POOL)
    escalate_to = escalation_targets(answers, build.pools.flat(CALIBRATION_POOL), thresholds)
    try:
        starts = router_start_tiers(build, build.pools.flat(CALIBRATION_POOL))
        baseline = baseline_escalation_rates(answers, starts, thresholds, escalate_to)
    except FileNotFoundError:  # no router built (yet): the monitor stays silent rather than guess
        baseline = {}
    record = {
        "status": "calibrated", "alpha": alpha, "pool": CALIBRATION_POOL, "correct_if": "quality >= effective bar", "counts": counts,
        "escalation_baseline": baseline,  # the escalation monitor's reference (bls_router/escalation_monitor.py)
        "escalate_to": escalate_to,  # the cascade's next tier per (task, tier) (CascadePolicy.next_tier)
    }
    return thresholds, record


def escalation_targets(answers: Answers, records, thresholds: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, str | None]]:
    """Per task and tier A, the cheapest pricier tier whose answers beat A's (the task metric) on
    the calibration records where A escalates (u > delta), or None when none does: escalating
    would then pay more for no better answer. When nothing escalates from A, all of the task's
    records decide. On a portfolio whose quality rises with price this is the next tier up, the
    paper's rule; here T2/T3 fall below T1 on structured tasks. Only tiers that answered every
    record of the task take part; a task with fewer than two gets no entry (the default rule)."""
    from routenlp.metrics import corpus_score

    targets: dict[str, dict[str, str | None]] = {}
    by_task: dict[str, list] = {}
    for record in records:
        by_task.setdefault(record["task"], []).append(record)
    for task, task_records in sorted(by_task.items()):
        tiers = [t for t in TIERS if all(t in answers.get(r["id"], {}) for r in task_records)]
        if len(tiers) < 2:
            continue

        def score(tier: str, subset) -> float:
            return corpus_score(task, [answers[r["id"]][tier]["prediction"] for r in subset], [r["target"] for r in subset])

        targets[task] = {}
        for i, tier in enumerate(tiers[:-1]):
            delta = thresholds.get(task, {}).get(tier, math.inf)
            subset = [r for r in task_records if float(answers[r["id"]][tier]["u"]) > delta] or task_records
            own = score(tier, subset)
            targets[task][tier] = next((up for up in tiers[i + 1 :] if score(up, subset) > own), None)
    return targets


def baseline_escalation_rates(
    answers: Answers,
    start_tiers: Mapping[str, str],
    thresholds: Mapping[str, Mapping[str, float]],
    escalate_to: Mapping[str, Mapping[str, str | None]] | None = None,
) -> dict[str, float]:
    """Per task, the share of requests whose first tier (the router's pick) escalates (u > delta
    and a tier to escalate to): the escalation monitor's baseline. T4 never escalates; a tier
    without a threshold accepts."""
    escalated: dict[str, list[bool]] = {}
    for record_id, tier in start_tiers.items():
        row = answers.get(record_id, {}).get(tier)
        if row is None:
            continue
        delta = thresholds.get(row["task"], {}).get(tier, math.inf) if tier in ESCALATING_TIERS else math.inf
        nowhere = escalate_to is not None and tier in escalate_to.get(row["task"], {}) and escalate_to[row["task"]][tier] is None
        escalated.setdefault(row["task"], []).append(float(row["u"]) > delta and not nowhere)
    return {task: round(sum(flags) / len(flags), 4) for task, flags in sorted(escalated.items())}


def router_start_tiers(build, records) -> dict[str, str]:
    """record id -> the tier the build's router sends it to (T1 only for structured tasks)."""
    from bls_router.service import choose_tier
    from export.router_model import load_router, router_logits
    from routenlp.tasks import get_task

    model, meta = load_router(build.root / "router")
    logits = router_logits(model, build.tokenizer(), records, meta["max_len"])
    return {
        record["id"]: choose_tier(row.tolist(), model.args["tier_names"], TIERS if get_task(record["task"]).structured else TIERS[1:])
        for record, row in zip(records, logits)
    }


def check_on(answers: Answers, thresholds: Mapping[str, Mapping[str, float]], bars: Mapping[str, float], counts=None) -> list[CheckRow]:
    """Empirical violation (wrong and accepted) per (task, tier) of `answers` (e.g. the dev pool)."""
    scores = scores_by_task_tier(answers, bars)
    rows = []
    for task in sorted(thresholds):
        for tier in ESCALATING_TIERS:
            if tier not in thresholds[task]:
                continue
            delta = thresholds[task][tier]
            us, oks = scores.get((task, tier), ([], []))
            rate, interval, n = violation_rate(us, oks, delta)
            escalated = sum(1 for u in us if u > delta) / n if n else 0.0
            count = (counts or {}).get(task, {}).get(tier, {})
            rows.append(CheckRow(task, tier, delta, count.get("n", 0), count.get("correct", 0), n, rate, interval, escalated))
    return rows


def write_calibrated_version(repository: Path, thresholds: Mapping[str, Mapping[str, float]], calibration: Mapping[str, Any]) -> Path:
    """A new version of the routenlp model: the latest version's files with the new thresholds.

    The models it routes to are untouched (their version is in the config: repository_version)."""
    from bls_router.serving_config import SERVING_CONFIG_FILE, load_serving_config
    from export.repository import latest_version, write_model_version
    from export.repository_builder import routenlp_model_spec

    repository = Path(repository)
    model_dir = repository / BLS_MODEL
    latest = latest_version(model_dir) if model_dir.is_dir() else 0
    if latest == 0:
        raise CalibrationUnavailable(f"{model_dir} has no version: write the repository first (`routenlp export`)")
    source = model_dir / str(latest)
    config = load_serving_config(source).with_thresholds(thresholds, calibration)
    files: dict[str, Any] = {
        name: source / name
        for name in sorted(os.listdir(source))
        if name != SERVING_CONFIG_FILE and not name.startswith(".") and name != "__pycache__"
    }
    files[SERVING_CONFIG_FILE] = config.dumps()
    return write_model_version(repository, routenlp_model_spec(config.target), files, version=latest + 1)
