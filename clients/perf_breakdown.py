"""Where a routed request's time goes, read from the running server around a perf_analyzer run.

Two sources, each differenced over the run: the BLS's own stage counters
(routenlp_stage_seconds_total{stage} / routenlp_stage_requests_total on /metrics, summed over
instances and versions; routenlp_core/stage_times.py) and Triton's per-model statistics
(/v2/models/<m>/stats: queue and compute time per request of the entry, router and T1 models).
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Sequence
from typing import Any

from routenlp_core.stage_times import breakdown

_SERIES = re.compile(r'^(routenlp_stage_seconds_total|routenlp_stage_requests_total)\{([^}]*)\}\s+(\S+)$')
_STAGE = re.compile(r'stage="([^"]+)"')
TRITON_PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def stage_counters(metrics_url: str) -> tuple[float, dict[str, float]]:
    """(requests, seconds per stage) from the BLS's counters, summed over every series."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    requests, seconds = 0.0, {}
    for line in text.splitlines():
        match = _SERIES.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        if name == "routenlp_stage_requests_total":
            requests += float(value)
        else:
            stage = _STAGE.search(labels).group(1)
            seconds[stage] = seconds.get(stage, 0.0) + float(value)
    return requests, seconds


def model_statistics(http_url: str, models: Sequence[str]) -> dict[str, dict[str, int]]:
    """model -> {count, executions, <phase>_ns} summed over its loaded versions."""
    out = {}
    for model in models:
        with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as response:
            stats = json.loads(response.read())["model_stats"]
        total = {"count": 0, "executions": 0, **{f"{p}_ns": 0 for p in TRITON_PHASES}}
        for entry in stats:
            inference = entry["inference_stats"]
            total["count"] += int(inference["success"]["count"])
            total["executions"] += int(entry.get("execution_count", 0))
            for phase in TRITON_PHASES:
                total[f"{phase}_ns"] += int(inference[phase]["ns"])
        out[model] = total
    return out


def triton_breakdown(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per model: requests and executions in the run, mean microseconds per request per phase."""
    out = {}
    for model, end in after.items():
        start = before.get(model, {})
        count = end["count"] - start.get("count", 0)
        row: dict[str, Any] = {"requests": count, "executions": end["executions"] - start.get("executions", 0)}
        for phase in TRITON_PHASES:
            key = f"{phase}_ns"
            row[f"{phase}_us"] = round((end[key] - start.get(key, 0)) / count / 1e3, 1) if count else None
        out[model] = row
    return out


class BreakdownProbe:
    """Reads both sources before and after a block: `with probe: run()`, then probe.result()."""

    def __init__(self, metrics_url: str, http_url: str, models: Sequence[str]) -> None:
        self.metrics_url, self.http_url, self.models = metrics_url, http_url, list(models)
        self._before: tuple | None = None
        self._after: tuple | None = None

    def read(self) -> tuple:
        return stage_counters(self.metrics_url), model_statistics(self.http_url, self.models)

    def __enter__(self) -> "BreakdownProbe":
        self._before = self.read()
        return self

    def __exit__(self, *exc) -> None:
        import time

        time.sleep(1.5)  # the BLS publishes its stage counters once a second
        self._after = self.read()

    def result(self) -> dict[str, Any]:
        (stages_before, triton_before), (stages_after, triton_after) = self._before, self._after
        return {
            "bls_requests": int(stages_after[0] - stages_before[0]),
            "bls_stages_us": breakdown(stages_before, stages_after),
            "triton_models": triton_breakdown(triton_before, triton_after),
        }
