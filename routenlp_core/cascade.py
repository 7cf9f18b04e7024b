"""The routing cascade as plain Python: which tier answers, when to escalate, how to fall back.

Triton-free: the BLS adapter passes `call_tier`, a function that runs one tier and returns a
TierResult or raises TierUnavailable. Everything a client sees in METADATA is built here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from routenlp_core.contract import TIERS


class TierUnavailable(RuntimeError):
    """A tier could not answer (down, timed out, circuit open); the cascade falls back."""


@dataclass(frozen=True)
class TierResult:
    output: Any  # the tier's answer (label, tag list or text)
    u: float  # uncertainty: mean(1 - p(token)) or 1 - max prob
    tokens: int  # tokens billed at this tier's price


@dataclass
class Stage:
    tier: str
    u: float | None = None
    tokens: int = 0  # billed tokens (prompt + completion)
    cost: float = 0.0
    latency_ms: float = 0.0
    accepted: bool = False
    error: str | None = None


@dataclass
class CascadeOutcome:
    output: Any
    tier: str
    stages: list[Stage] = field(default_factory=list)
    fallback: str | None = None  # why the answer did not come from the normal path

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.stages)

    @property
    def escalations(self) -> int:
        return sum(1 for s in self.stages if s.u is not None and not s.accepted)

    def metadata(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "path": [s.tier for s in self.stages],
            "u": {s.tier: s.u for s in self.stages if s.u is not None},
            "cost_usd": round(self.cost, 8),
            "tokens": {s.tier: s.tokens for s in self.stages if s.u is not None},
            "latency_ms": {s.tier: round(s.latency_ms, 3) for s in self.stages},
            "escalations": self.escalations,
            "fallback": self.fallback,
            "errors": {s.tier: s.error for s in self.stages if s.error},
        }


@dataclass(frozen=True)
class CascadePolicy:
    # delta[task][tier]: escalate when u > delta. A missing entry means "accept" (no threshold).
    thresholds: Mapping[str, Mapping[str, float]]
    # price per 1K tokens per tier.
    prices: Mapping[str, float]
    # Tiers that can answer each kind of task: T1 only has heads for structured tasks.
    structured_tasks: frozenset[str]
    # escalate_to[task][tier]: where an uncertain answer goes, the cheapest tier that is better on
    # the task than `tier` (None: no better tier, accept). A missing entry means the next tier up,
    # the paper's rule, which assumes quality rises with price; calibration writes the table.
    escalate_to: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)

    def servable(self, task: str) -> tuple[str, ...]:
        return TIERS if task in self.structured_tasks else TIERS[1:]

    def delta(self, task: str, tier: str) -> float:
        return self.thresholds.get(task, {}).get(tier, float("inf"))

    def next_tier(self, task: str, tier: str, candidates: Sequence[str]) -> str | None:
        """The tier an uncertain `tier` answer escalates to, among `candidates` (untried tiers above
        it, cheapest first): the configured target or the first candidate past it; None: accept."""
        by_tier = self.escalate_to.get(task, {})
        if tier not in by_tier:
            return candidates[0] if candidates else None
        target = by_tier[tier]
        if target is None:
            return None
        later = [t for t in candidates if TIERS.index(t) >= TIERS.index(target)]
        return later[0] if later else None


def run_cascade(
    task: str,
    start_tier: str,
    call_tier: Callable[[str], TierResult],
    policy: CascadePolicy,
    max_tier: str = "t4",
    clock: Callable[[], float] = time.perf_counter,
) -> CascadeOutcome:
    """Answer from `start_tier` upward; escalate while u > delta[task][tier], up to `max_tier`, to
    the policy's next tier (the cheapest one better on the task, or the next one up).

    Fallbacks (paper 3.2 and appendix K), each named in the outcome:
    - T4 unreachable: T3 is the ceiling and its answer is accepted with a relaxed threshold
      (the best answer already in hand, else T3 is asked);
    - T2/T3 unreachable: structured tasks go to T1, generation tasks to T4; both accepted.
    Raises TierUnavailable only when no tier could answer at all.
    """
    servable = [t for t in policy.servable(task) if TIERS.index(t) <= TIERS.index(max_tier)]
    if not servable:
        raise ValueError(f"max_tier {max_tier} leaves no tier that serves {task}")
    tier = start_tier if start_tier in servable else servable[0]
    stages: list[Stage] = []
    answers: dict[str, TierResult] = {}
    fallback: str | None = None
    relaxed = False  # a fallback answer is accepted whatever its u
    while tier is not None:
        stage = Stage(tier)
        stages.append(stage)
        started = clock()
        try:
            result = call_tier(tier)
        except TierUnavailable as err:
            stage.error = str(err)
            stage.latency_ms = (clock() - started) * 1e3
            tier, fallback = _fallback_tier(task, tier, servable, answers, policy, stages)
            if tier is not None and tier in answers:  # T4 down: accept the answer we already have
                return _accept(answers[tier], tier, stages, fallback)
            relaxed = tier is not None
            continue
        stage.latency_ms = (clock() - started) * 1e3
        stage.u = result.u
        stage.tokens = int(result.tokens)
        stage.cost = result.tokens / 1000.0 * policy.prices[tier]
        answers[tier] = result
        higher = [t for t in servable if TIERS.index(t) > TIERS.index(tier) and t not in answers and not _failed(t, stages)]
        target = policy.next_tier(task, tier, higher)
        if relaxed or result.u <= policy.delta(task, tier) or target is None:
            return _accept(result, tier, stages, fallback)
        tier = target
    raise TierUnavailable(f"no tier could answer {task}: " + "; ".join(f"{s.tier}: {s.error}" for s in stages if s.error))


def _failed(tier: str, stages: list[Stage]) -> bool:
    return any(s.tier == tier and s.error for s in stages)


def _fallback_tier(task, failed, servable, answers, policy, stages) -> tuple[str | None, str | None]:
    """The tier to try after `failed` was unreachable, and the reason to report."""
    untried = lambda t: t in servable and t not in answers and not _failed(t, stages)  # noqa: E731
    if failed == "t4":
        below = [t for t in ("t3", "t2", "t1") if t in answers]
        if below:
            return below[0], f"t4 unavailable: accepted {below[0]} answer (relaxed threshold)"
        for t in ("t3", "t2", "t1"):
            if untried(t):
                return t, f"t4 unavailable: {t} ceiling with relaxed threshold"
        return None, "t4 unavailable"
    if failed in ("t2", "t3"):
        target = "t1" if task in policy.structured_tasks else "t4"
        if untried(target):
            return target, f"{failed} unavailable: {'structured task to t1' if target == 't1' else 'generation task to t4'}"
        others = [t for t in servable if untried(t)]
        return (others[0], f"{failed} unavailable: tried {others[0]}") if others else (None, f"{failed} unavailable")
    # t1 unavailable: the next tier up answers as usual.
    others = [t for t in servable if untried(t) and TIERS.index(t) > TIERS.index(failed)]
    return (others[0], "t1 unavailable: escalated") if others else (None, "t1 unavailable")


def _accept(result: TierResult, tier: str, stages: list[Stage], fallback: str | None) -> CascadeOutcome:
    for stage in stages:
        stage.accepted = stage.tier == tier and stage.u is not None
    return CascadeOutcome(result.output, tier, stages, fallback)
