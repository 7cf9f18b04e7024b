"""Benchmark records through the running server, scored: the served side of every evaluation.

route_records() sends records to the `routenlp` entry model under one POLICY ("routenlp" or a
fixed tier such as "always-t4"), `concurrency` requests in flight (one tritonclient per worker
thread), and keeps each answer's OUTPUT, METADATA and client-side latency. summarize() scores the
answers with the task metrics and gives the routing mix, cost and latency percentiles;
compare() puts a system beside the reference (Always-T4): quality ratio and cost ratio.

Quality ratio = mean over tasks of the system's task metric / the same mean for the reference
(a ratio of macro-averages: a task where the reference scores 0 cannot blow it up).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from routenlp_core.cascade import TIERS


@dataclass
class ServedAnswer:
    record: Mapping[str, Any]
    output: str | None
    metadata: dict[str, Any] | None
    latency_ms: float
    error: str | None = None


def prediction_from_output(task: str, output: str) -> Any:
    """The entry model's OUTPUT back into a prediction comparable with record["target"]."""
    from routenlp_core.tasks import get_task

    kind = get_task(task).kind
    if kind == "classification":
        return json.loads(output)["label"]
    if kind == "ner":
        return json.loads(output)["tags"]
    return output


class ServedCaller:
    """Sends records to the entry model: `send(record, policy)`, or `(record, tier)` for the
    fixed-tier policy; one tritonclient per worker thread (clients are not thread-safe)."""

    def __init__(self, url: str, protocol: str = "grpc", timeout_s: float = 120.0) -> None:
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()

    def _client(self):
        from clients.route_client import RouteClient

        if not hasattr(self._local, "client"):
            self._local.client = RouteClient(self.url, self.protocol)
            with self._lock:
                self._clients.append(self._local.client)
        return self._local.client

    def send(self, record: Mapping[str, Any], policy: str) -> ServedAnswer:
        from tritonclient.utils import InferenceServerException

        started = time.perf_counter()
        try:
            answer = self._client().route(record["text"], record["task"], request_id=f"{policy}-{record['id']}", policy=policy, timeout_s=self.timeout_s)
        except InferenceServerException as err:
            return ServedAnswer(record, None, None, (time.perf_counter() - started) * 1e3, str(err))
        return ServedAnswer(record, answer.output, answer.metadata, (time.perf_counter() - started) * 1e3)

    def __call__(self, record: Mapping[str, Any], tier: str) -> ServedAnswer:
        return self.send(record, f"always-{tier}")

    def close(self) -> None:
        for client in self._clients:
            client.close()


def served_prediction(answer: ServedAnswer) -> Any:
    """The answer's prediction; a failed request counts as a wrong answer, never silently dropped."""
    from routenlp_core.tasks import get_task

    if answer.error is None:
        return prediction_from_output(answer.record["task"], answer.output)
    return ["O"] * len(answer.record["target"]) if get_task(answer.record["task"]).kind == "ner" else ""


def route_records(
    url: str,
    records: Sequence[Mapping[str, Any]],
    policy: str = "routenlp",
    *,
    concurrency: int = 4,
    protocol: str = "grpc",
    timeout_s: float = 120.0,
    progress: bool = True,
    desc: str | None = None,
) -> list[ServedAnswer]:
    from tqdm.auto import tqdm

    caller = ServedCaller(url, protocol, timeout_s)
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            iterator = pool.map(lambda record: caller.send(record, policy), records)
            return list(tqdm(iterator, total=len(records), desc=desc or policy, disable=not progress, leave=False))
    finally:
        caller.close()


def _percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def summarize(answers: Sequence[ServedAnswer], latencies_ms: Sequence[float] | None = None) -> dict[str, Any]:
    """One system's served answers, as the demo, coopt and bench report them: quality per task (the
    task metric over every record: a failed request counts as wrong) and its macro mean, the routing
    mix over answered requests (overall and per task), dollars, escalations, fallbacks, server-side
    SLA misses, and latency percentiles (of `latencies_ms` when given: bench times a baseline's
    several calls per record; else of each answered request)."""
    from routenlp.metrics.task_bootstrap import mean_quality, task_indices

    task_idx = task_indices([a.record for a in answers])
    mean, per_task = mean_quality(task_idx, [served_prediction(a) for a in answers], [a.record["target"] for a in answers])
    served = [a for a in answers if a.error is None]
    mix = Counter(a.metadata["tier"] for a in served)
    latencies = [a.latency_ms for a in served] if latencies_ms is None else list(latencies_ms)
    sla = [a.metadata.get("sla_met") for a in served if a.metadata.get("sla_met") is not None]

    def answered_at(i: int, tier: str) -> bool:
        return answers[i].error is None and answers[i].metadata["tier"] == tier

    return {
        "requests": len(answers),
        "errors": len(answers) - len(served),
        "quality": {task: round(q, 4) for task, q in per_task.items()},
        "mean_quality": round(mean, 4) if per_task else None,
        "mix": {tier: round(mix[tier] / len(served), 4) for tier in TIERS} if served else {},
        "mix_by_task": {task: {tier: sum(answered_at(i, tier) for i in idx) for tier in TIERS} for task, idx in task_idx.items()},
        "dollars": round(sum(a.metadata["cost_usd"] for a in served), 6),
        "escalation_rate": round(sum(1 for a in served if a.metadata.get("escalations")) / len(served), 4) if served else None,
        "fallbacks": sum(1 for a in served if a.metadata.get("fallback")),
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
        "sla_violation": round(1 - sum(sla) / len(sla), 4) if sla else None,
    }


def service_times(answers: Sequence[ServedAnswer]) -> dict[str, list[float]]:
    """Per-tier stage latencies (ms) measured inside the BLS: the capacity model's service times."""
    samples: dict[str, list[float]] = {tier: [] for tier in TIERS}
    for answer in answers:
        if answer.error is None:
            for tier, ms in answer.metadata.get("latency_ms", {}).items():
                if tier in samples:
                    samples[tier].append(round(float(ms), 3))
    return samples


def compare(system: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, float | None]:
    """Quality and cost ratios of `system` against `reference` (both from summarize())."""
    quality = system["mean_quality"] / reference["mean_quality"] if reference.get("mean_quality") else None
    cost = system["dollars"] / reference["dollars"] if reference.get("dollars") else None
    return {"quality_ratio": None if quality is None else round(quality, 4), "cost_ratio": None if cost is None else round(cost, 4)}
