"""Escalation-rate monitor (paper 4.5): alert when a task's escalation rate rises more than 10%
(relative) over its calibration baseline.

The baseline is the share of calibration requests whose first tier (the router's pick) escalated,
computed by `routenlp calibrate` / the export (export/calibrate.py: the replayed share of requests escalating from their first tier).
Live, the monitor keeps the last `window` requests per task; once it holds at least `min_requests`
it compares. A rising rate means the traffic drifted from what the thresholds were calibrated on,
or a tier got worse: either way more dollars per request, which someone should look at.

Plain Python (no Triton): the BLS adapter logs the returned alerts and sets gauges from state().
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_WINDOW = 200
DEFAULT_MIN_REQUESTS = 50
DEFAULT_RELATIVE_RISE = 0.10


@dataclass(frozen=True)
class AlertChange:
    """The alert of `task` switched on (`raised`) or off."""

    task: str
    raised: bool
    rate: float
    baseline: float
    limit: float
    window: int

    def message(self) -> str:
        if self.raised:
            return (
                f"escalation-rate alert: {self.task} escalates {self.rate:.1%} of its last {self.window} requests, "
                f"above the limit {self.limit:.1%} (calibration baseline {self.baseline:.1%} + {DEFAULT_RELATIVE_RISE:.0%} relative)"
            )
        return f"escalation-rate alert cleared: {self.task} back at {self.rate:.1%} (baseline {self.baseline:.1%})"


class EscalationMonitor:
    def __init__(
        self,
        baseline: Mapping[str, float],
        *,
        window: int = DEFAULT_WINDOW,
        min_requests: int = DEFAULT_MIN_REQUESTS,
        relative_rise: float = DEFAULT_RELATIVE_RISE,
    ) -> None:
        if window < 1 or not 1 <= min_requests <= window:
            raise ValueError("need window >= 1 and 1 <= min_requests <= window")
        self.baseline = {task: float(rate) for task, rate in baseline.items()}
        self.window = window
        self.min_requests = min_requests
        self.relative_rise = relative_rise
        self._recent: dict[str, deque[bool]] = {}
        self._alerting: set[str] = set()

    def limit(self, task: str) -> float | None:
        base = self.baseline.get(task)
        return None if base is None else base * (1.0 + self.relative_rise)

    def rate(self, task: str) -> float | None:
        recent = self._recent.get(task)
        return sum(recent) / len(recent) if recent else None

    def observe(self, task: str, escalated: bool) -> AlertChange | None:
        """Record one request; returns the change when the task's alert switches on or off."""
        recent = self._recent.setdefault(task, deque(maxlen=self.window))
        recent.append(bool(escalated))
        limit = self.limit(task)
        if limit is None or len(recent) < self.min_requests:
            return None  # no baseline (uncalibrated) or too few requests to judge
        rate = sum(recent) / len(recent)
        was_alerting = task in self._alerting
        # Hysteresis: raised above the limit, cleared only back at the baseline, so a rate hovering
        # at the limit gives one alert instead of a flapping stream.
        alerting = rate > self.baseline[task] if was_alerting else rate > limit
        if alerting == was_alerting:
            return None
        (self._alerting.add if alerting else self._alerting.discard)(task)
        return AlertChange(task, alerting, rate, self.baseline[task], limit, len(recent))

    def alerting(self, task: str) -> bool:
        return task in self._alerting

    def state(self) -> dict[str, dict[str, float | bool | int | None]]:
        tasks = sorted(set(self.baseline) | set(self._recent))
        return {
            task: {
                "rate": self.rate(task),
                "baseline": self.baseline.get(task),
                "limit": self.limit(task),
                "requests": len(self._recent.get(task, ())),
                "alert": task in self._alerting,
            }
            for task in tasks
        }
