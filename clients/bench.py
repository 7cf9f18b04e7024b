"""`routenlp bench`: RouteNLP and every baseline through the live server, side by side (paper 5).

Each system answers the same records by sending real requests (RouteNLP with POLICY routenlp, the
others client-side over the fixed-tier policies, clients/baselines.py); the oracle is the
hindsight lower bound over the fixed-tier answers. Per system: quality ratio vs Always-T4 with a
paired, task-stratified bootstrap 95% CI, cost ratio, p50/p99 latency, SLA violation, escalation
rate; per task quality against its bar; per (task, tier) conformal violation with Wilson intervals.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from bls_router.cascade import TIERS
from clients import baselines as bl
from clients.served_eval import ServedCaller, served_prediction
from routenlp.metrics.task_bootstrap import N_BOOT, Bootstrap, mean_quality, task_indices

REFERENCE = "always-t4"


@dataclass
class SystemRun:
    name: str
    routed: list[bl.Routed]  # in record order
    latency_ms: list[float]  # per record, all of its calls
    fitted: dict[str, Any] | None = None


class ServedPolicy(bl.Policy):
    """A policy the BLS itself runs (POLICY input): RouteNLP and its cascade ablations."""

    def __init__(self, policy: str, caller: ServedCaller) -> None:
        self.name, self.caller = policy, caller

    def answer(self, record, call):
        return bl.Routed([self.caller.send(record, self.name)])


def run_policy(policy: bl.Policy, records: Sequence[Mapping[str, Any]], caller: ServedCaller, concurrency: int, progress: bool) -> SystemRun:
    from tqdm.auto import tqdm

    def one(record):
        started = time.perf_counter()
        routed = policy.answer(record, caller)
        return routed, (time.perf_counter() - started) * 1e3

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(tqdm(pool.map(one, records), total=len(records), desc=policy.name, disable=not progress, leave=False))
    return SystemRun(policy.name, [r for r, _ in results], [ms for _, ms in results])


# ---------------------------------------------------------------- scoring


def _dollars(routed: bl.Routed) -> float:
    return sum(c.metadata["cost_usd"] for c in routed.calls if c.error is None)


def quality_ratio_ci(system_boot: np.ndarray, reference_boot: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of system / reference over the shared resamples."""
    valid = reference_boot > 0
    if not valid.any():
        return float("nan"), float("nan")
    low, high = np.percentile(system_boot[valid] / reference_boot[valid], [2.5, 97.5])
    return round(float(low), 4), round(float(high), 4)


def system_row(run: SystemRun, records, task_idx, reference: dict[str, Any], sla_ms: Mapping[str, float], bootstrap: Bootstrap) -> dict[str, Any]:
    targets = [r["target"] for r in records]
    predictions = [served_prediction(routed.final) for routed in run.routed]
    quality, per_task = mean_quality(task_idx, predictions, targets)
    dollars = float(np.mean([_dollars(r) for r in run.routed]))
    latencies = np.asarray(run.latency_ms)
    violated = [ms > sla_ms[rec["task"]] for ms, rec in zip(run.latency_ms, records)]
    escalated = [len(r.calls) > 1 or bool((r.final.metadata or {}).get("escalations")) for r in run.routed]
    errors = sum(1 for r in run.routed if r.final.error is not None)
    mix = {tier: 0 for tier in TIERS}
    for routed in run.routed:
        if routed.final.error is None:
            mix[routed.final.metadata["tier"]] += 1
    row = {
        "name": run.name,
        "quality": round(quality, 4),
        "quality_ratio": round(quality / reference["quality"], 4) if reference["quality"] else None,
        "quality_ratio_ci95": list(quality_ratio_ci(bootstrap.qualities(predictions, targets), reference["boot"])) if run.name != REFERENCE else [1.0, 1.0],
        "dollars_per_request": round(dollars, 6),
        "cost_ratio": round(dollars / reference["dollars"], 6) if reference["dollars"] else None,
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "sla_violation": round(float(np.mean(violated)), 4),
        "escalation_rate": round(float(np.mean(escalated)), 4),
        "errors": errors,
        "requests_sent": sum(len(r.calls) for r in run.routed),
        "quality_by_task": {t: round(q, 4) for t, q in per_task.items()},
        "mix": {tier: round(n / len(run.routed), 4) for tier, n in mix.items()},
        "mix_by_task": {task: {tier: sum(1 for i in idx if not run.routed[i].final.error and run.routed[i].final.metadata["tier"] == tier) for tier in TIERS} for task, idx in task_idx.items()},
    }  # fmt: skip
    if run.fitted:
        row["fitted"] = run.fitted
    return row


def reference_stats(run: SystemRun, records, task_idx, bootstrap: Bootstrap | None = None) -> dict[str, Any]:
    predictions = [served_prediction(routed.final) for routed in run.routed]
    targets = [r["target"] for r in records]
    quality, _ = mean_quality(task_idx, predictions, targets)
    boot = bootstrap.qualities(predictions, targets) if bootstrap is not None else None
    return {"quality": quality, "dollars": float(np.mean([_dollars(r) for r in run.routed])), "predictions": predictions, "boot": boot}


def oracle_run(fixed: Mapping[str, SystemRun], records, bars: Mapping[str, float]) -> SystemRun:
    """Per record, the cheapest fixed-tier served answer meeting the bar (hindsight lower bound)."""
    from routenlp.metrics import example_score

    routed, latency = [], []
    for i, record in enumerate(records):
        answers = {run.routed[i].final.metadata["tier"]: run.routed[i].final for run in fixed.values() if run.routed[i].final.error is None}
        quality = {tier: example_score(record["task"], served_prediction(a), record["target"]) for tier, a in answers.items()}
        tier = bl.oracle_tier(record["task"], quality, bars[record["task"]])
        routed.append(bl.Routed([answers[tier]]))
        latency.append(answers[tier].latency_ms)
    return SystemRun("oracle", routed, latency)


def conformal_rows(fixed: Mapping[str, SystemRun], records, thresholds: Mapping[str, Mapping[str, float]], bars: Mapping[str, float]) -> list[dict[str, Any]]:
    """Served violation Pr[wrong and accepted (u <= delta)] per (task, tier), Wilson 95%."""
    from routenlp.metrics import example_score, wilson_interval

    rows = []
    for tier in TIERS[:-1]:
        run = fixed.get(f"always-{tier}")
        if run is None:
            continue
        for task, delta in sorted((t, d.get(tier)) for t, d in thresholds.items()):
            if delta is None:
                continue
            served = [(r, a.final) for r, a in zip(records, run.routed) if r["task"] == task and a.final.error is None and a.final.metadata["tier"] == tier]
            if not served:
                continue
            violations = sum(
                1 for r, a in served if a.metadata["u"][tier] <= delta and example_score(task, served_prediction(a), r["target"]) < bars[task]
            )
            low, high = wilson_interval(violations, len(served))
            rows.append({"task": task, "tier": tier, "delta": delta, "n": len(served), "violation": round(violations / len(served), 4), "wilson95": [round(low, 4), round(high, 4)]})
    return rows


# ---------------------------------------------------------------- one bench run


def fit_baselines(build, config, budget: float, cheap_dollars: float, top_dollars: float, seed: int = 0) -> list[tuple[bl.Policy, dict[str, Any]]]:
    """Every client-side baseline, fitted on the build's router pool under RouteNLP's budget."""
    bars, prices = dict(config.bars), dict(config.prices)
    pool_answers = build.load_answers("router")
    pool = [r for r in build.pools.flat("router") if r["id"] in pool_answers]
    dev_quality = build.cache.stamp("router")["summary"]["dev_quality"]

    def quality(record, tier):
        return float(pool_answers[record["id"]][tier]["quality"])

    routellm = bl.TextClassifier(seed).fit(pool, [quality(r, "t2") >= bars[r["task"]] for r in pool])
    hybrid = bl.TextClassifier(seed).fit(pool, [quality(r, "t2") >= quality(r, "t4") for r in pool])
    scorer = bl.AnswerScorer(seed).fit([row for by_tier in pool_answers.values() for row in by_tier.values()], bars)
    frugal_t, frugal_fit = bl.search_threshold(pool_answers, pool, bl.frugal_chain, scorer, prices, bars, budget)
    automix_t, automix_fit = bl.search_threshold(pool_answers, pool, bl.automix_chain, bl.self_confidence, prices, bars, budget)
    rules = bl.rule_by_task(dev_quality, bars)
    p_top = bl.p_top_for_cost(budget, cheap_dollars, top_dollars)
    return [
        (bl.RandomMatchedCost(p_top, seed), {"p_t4": round(p_top, 4), "budget": round(budget, 6)}),
        (bl.RuleByTask(rules), {"tier_by_task": rules}),
        (bl.BinaryRouter("routellm (T2/T4)", routellm), {"classifier": "tf-idf + logistic regression", "label": "t2 meets bar", "threshold": 0.5}),
        (bl.BinaryRouter("hybridllm (T2/T4)", hybrid), {"classifier": "tf-idf + logistic regression", "label": "q(t2) >= q(t4)", "threshold": 0.5}),
        (bl.ScoredCascade("frugalgpt", bl.frugal_chain, scorer, frugal_t), {**frugal_fit, "budget": round(budget, 6)}),
        (bl.ScoredCascade("automix", bl.automix_chain, bl.self_confidence, automix_t), {**automix_fit, "budget": round(budget, 6)}),
    ]


def run_bench(url: str, build, config, records: Sequence[Mapping[str, Any]], *, concurrency: int = 4, n_boot: int = N_BOOT, progress: bool = True, log=print) -> dict[str, Any]:
    caller = ServedCaller(url)
    runs: dict[str, SystemRun] = {}
    seconds: dict[str, float] = {}

    def timed(policy: bl.Policy) -> SystemRun:
        started = time.perf_counter()
        run = run_policy(policy, records, caller, concurrency, progress)
        seconds[run.name] = round(time.perf_counter() - started, 1)
        log(f"  {run.name}: {len(records)} records, {sum(len(r.calls) for r in run.routed)} requests in {seconds[run.name]:.0f} s")
        return run

    try:
        for tier in TIERS:
            runs[f"always-{tier}"] = timed(bl.FixedTier(tier))
        from bls_router.service import ROUTED_POLICIES, ROUTER_ABLATION_POLICIES

        for policy in ROUTED_POLICIES:  # routenlp, then its cascade and router ablations
            if ROUTER_ABLATION_POLICIES.get(policy, "router") in ("router", *config.router_models):
                runs[policy] = timed(ServedPolicy(policy, caller))
        task_idx = task_indices(records)
        reference = reference_stats(runs[REFERENCE], records, task_idx)
        budget = float(np.mean([_dollars(r) for r in runs["routenlp"].routed]))
        cheap = float(np.mean([_dollars(r) for r in runs["always-t1"].routed]))
        for policy, fitted in fit_baselines(build, config, budget, cheap, reference["dollars"]):
            run = timed(policy)
            run.fitted = fitted
            runs[run.name] = run
    finally:
        caller.close()
    fixed = {name: run for name, run in runs.items() if name.startswith("always-")}
    runs["oracle"] = oracle_run(fixed, records, config.bars)
    sla = dict(config.latency_sla_ms)
    bootstrap = Bootstrap(task_idx, n_boot)
    reference["boot"] = reference_stats(runs[REFERENCE], records, task_idx, bootstrap)["boot"]
    systems = [system_row(run, records, task_idx, reference, sla, bootstrap) for run in runs.values()]
    return {
        "records": len(records),
        "concurrency": concurrency,
        "reference": REFERENCE,
        "bars": dict(config.bars),
        "seconds": seconds,
        "systems": systems,
        "conformal": conformal_rows(fixed, records, config.thresholds, config.bars),
        "latency_ms": {name: run.latency_ms for name, run in runs.items()},
    }
