"""`routenlp bench`: RouteNLP and every baseline through the live server, side by side (paper 5).

Each system answers the same records by sending real requests (RouteNLP with POLICY routenlp, the
others client-side over the fixed-tier policies, clients/baselines.py); the oracle is the
hindsight lower bound over the fixed-tier answers. Per system: quality ratio vs Always-T4 with a
paired, task-stratified bootstrap 95% CI, cost ratio, p50/p99 latency, SLA violation, escalation
rate; per task quality against its bar; per (task, tier) the cascade's realised regret with Wilson
intervals; and every system's cost-quality curve, swept offline over the served Always-tK answers
(clients/curves.py), with each system's cost at quality ratio >= 0.97 and paired bootstrap CIs of
its difference to RouteNLP. Peers are served at the operating point fitted on calibration.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from clients import baselines as bl
from clients.served_eval import ServedCaller, served_prediction, summarize
from routenlp.metrics.task_bootstrap import N_BOOT, Bootstrap, mean_quality, task_indices
from routenlp_core.cascade import TIERS

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
    """served_eval.summarize()'s quality, mix, errors and latency of the run, plus what only bench
    measures: ratios to the reference with a CI, every call's dollars, client-side SLA misses."""
    targets = [r["target"] for r in records]
    finals = [routed.final for routed in run.routed]
    predictions = [served_prediction(answer) for answer in finals]
    summary = summarize(finals, run.latency_ms)
    quality = summary["mean_quality"]
    dollars = float(np.mean([_dollars(r) for r in run.routed]))
    violated = [ms > sla_ms[rec["task"]] for ms, rec in zip(run.latency_ms, records)]
    escalated = [len(r.calls) > 1 or bool((r.final.metadata or {}).get("escalations")) for r in run.routed]
    row = {
        "name": run.name,
        "quality": quality,
        "quality_ratio": round(quality / reference["quality"], 4) if reference["quality"] else None,
        "quality_ratio_ci95": list(quality_ratio_ci(bootstrap.qualities(predictions, targets), reference["boot"])) if run.name != REFERENCE else [1.0, 1.0],
        "dollars_per_request": round(dollars, 6),
        "cost_ratio": round(dollars / reference["dollars"], 6) if reference["dollars"] else None,
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "sla_violation": round(float(np.mean(violated)), 4),
        "escalation_rate": round(float(np.mean(escalated)), 4),
        "errors": summary["errors"],
        "requests_sent": sum(len(r.calls) for r in run.routed),
        "quality_by_task": summary["quality"],
        "mix": summary["mix"],
        "mix_by_task": summary["mix_by_task"],
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


def served_table(fixed: Mapping[str, SystemRun], records) -> dict[str, dict[str, dict[str, Any]]]:
    """id -> tier -> the served Always-tier answer (prediction, u, tokens, dollars, quality): what
    the offline curves and the guarantee check replay every system's decisions over."""
    from routenlp.metrics import example_score

    table: dict[str, dict[str, dict[str, Any]]] = {}
    for name, run in fixed.items():
        for record, routed in zip(records, run.routed):
            final = routed.final
            if final.error is not None:
                continue
            tier = final.metadata["tier"]
            prediction = served_prediction(final)
            table.setdefault(record["id"], {})[tier] = {
                "task": record["task"], "prediction": prediction, "u": float(final.metadata["u"].get(tier, 1.0)),
                "tokens": int(final.metadata["tokens"].get(tier, 0)), "dollars": float(final.metadata["cost_usd"]),
                "quality": float(example_score(record["task"], prediction, record["target"])),
            }
    return table


def guarantee_rows(build, config, records, table) -> list[dict[str, Any]]:
    """The cascade's promise checked on the served answers: per (task, tier) realised regret of
    the served rules with its Wilson 95% interval (export.calibrate.check_pool)."""
    from export.calibrate import (
        build_prices,
        check_pool,
        router_pass_probabilities,
        rules_from_calibration,
        structured_tasks,
        task_alphas,
    )

    rules = rules_from_calibration(config.thresholds, config.calibration)
    alphas = {**task_alphas(build, None), **(config.calibration.get("alpha") if isinstance(config.calibration.get("alpha"), Mapping) else {})}
    usable = [r for r in records if all(t in table.get(r["id"], {}) for t in bl.servable(r["task"]))]
    probs = router_pass_probabilities(build, usable) if rules.utility else None
    cells, _ = check_pool("bench", usable, table, probs, rules, build_prices(build), structured_tasks(), alphas, dict(config.bars))
    return [cell.as_table_row() for cell in cells]


# ---------------------------------------------------------------- one bench run


def peer_systems(build, bars: Mapping[str, float], seed: int = 0) -> list:
    """Every peer as a swept decision rule (clients/curves.py); the learned parts are fitted on the
    build's router pool, rule-by-task on the calibration pool's quality table, and each knob grid
    spans its score's quantiles on the calibration pool (so each curve runs from the cheapest to
    the priciest end). Never on dev."""
    from clients import curves
    from export.calibrate import oracle_tier, structured_tasks
    from export.quality import quality_table

    bars = dict(bars)
    pool_answers = build.load_answers("router")
    pool = [r for r in build.pools.flat("router") if r["id"] in pool_answers]
    routellm = bl.TierPassClassifier(seed=seed).fit(pool, bl.routellm_labels(pool, pool_answers, bars))
    hybrid = bl.TierPassClassifier(seed=seed).fit(pool, bl.hybrid_labels(pool, pool_answers, bars))
    oracle = [oracle_tier(r["task"], pool_answers[r["id"]], bars, structured_tasks()) for r in pool]
    tfidf = bl.OracleTierClassifier(seed).fit(pool, oracle)
    scorer = bl.AnswerScorer(seed).fit([row for by_tier in pool_answers.values() for row in by_tier.values()], bars)
    calibration_answers = build.load_answers("calibration")
    calibration = [r for r in build.pools.flat("calibration") if r["id"] in calibration_answers]
    rules = bl.rule_by_task(quality_table(calibration_answers, calibration), bars)

    def memo(classifier):
        cache: dict[str, dict[str, float]] = {}

        def probabilities(record):
            if record["id"] not in cache:
                cache[record["id"]] = classifier.probabilities([record])[0]
            return cache[record["id"]]

        return probabilities

    def pass_grid(classifier, tiers):
        return curves.quantile_grid([p[t] for p in classifier.probabilities(calibration) for t in tiers if t in p])

    def cascade_grid(score, chain):
        rows = [(r, t, calibration_answers[r["id"]][t]) for r in calibration for t in chain(r["task"])[:-1]]
        return curves.quantile_grid([score(r, t, float(row["u"]), int(row.get("tokens", 0))) for r, t, row in rows])

    p_routellm, p_hybrid, p_tfidf = memo(routellm), memo(hybrid), memo(tfidf)
    return [
        curves.random_matched(seed),
        curves.rule_by_task(rules),
        curves.pass_router("tfidf-lr router", p_tfidf, grid=pass_grid(tfidf, TIERS[:-1])),
        curves.pass_router("routellm-mf (T2/T4)", p_routellm, ("t2", "t4"), grid=pass_grid(routellm, ("t2",))),
        curves.pass_router("routellm-mf (4-tier)", p_routellm, grid=pass_grid(routellm, TIERS[:-1])),
        curves.pass_router("hybridllm (T2/T4)", p_hybrid, ("t2", "t4"), grid=pass_grid(hybrid, ("t2",))),
        curves.pass_router("hybridllm (4-tier)", p_hybrid, grid=pass_grid(hybrid, TIERS[:-1])),
        curves.scored_cascade("frugalgpt", bl.frugal_chain, scorer, grid=cascade_grid(scorer, bl.frugal_chain)),
        curves.scored_cascade("automix", bl.automix_chain, bl.self_confidence, grid=cascade_grid(bl.self_confidence, bl.automix_chain)),
    ]


def fit_baselines(build, bars: Mapping[str, float], seed: int = 0) -> list[tuple[bl.Policy, dict[str, Any]]]:
    """Every peer at the operating point it would be deployed at: the cheapest knob setting whose
    quality on the calibration pool is >= 0.97 x Always-T4's there (else its best quality)."""
    from clients import curves
    from export.calibrate import build_prices

    answers = build.load_answers("calibration")
    records = [r for r in build.pools.flat("calibration") if r["id"] in answers and all(t in answers[r["id"]] for t in bl.servable(r["task"]))]
    table = curves.table_from_answers(answers, build_prices(build))
    fitted = []
    for system in peer_systems(build, bars, seed):
        knob, fit = curves.choose_knob(system, records, table)
        fitted.append((bl.SystemPolicy(system, knob), fit))
    return fitted


def utility_routing(build, guarantee: str = "ltt"):
    """RouteNLP's quality model and per-lambda cascade, fitted on the calibration pool."""
    from export.calibrate import build_prices, router_pass_probabilities, task_alphas
    from export.utility_router import UtilityRouting

    records = build.pools.flat("calibration")
    return UtilityRouting(records, build.load_answers("calibration"), router_pass_probabilities(build, records), build_prices(build), task_alphas(build, None),
                          guarantee=guarantee)


def routenlp_systems(routing, probs, provisional: bool = False) -> list:
    """RouteNLP swept over lambda, and its ablations: no cascade (router only, swept), no cost
    term (lambda = 0), no quality term (lambda = inf: the cheapest tier). provisional: with the
    fit part's own cascade, to choose lambda on (as `routenlp calibrate` does)."""
    from clients import curves

    return [curves.routenlp(routing, probs, provisional=provisional),
            curves.routenlp(routing, probs, "routenlp (no cascade)", cascade=False, provisional=provisional),
            curves.routenlp(routing, probs, "routenlp (no cost term)", grid=(0.0,), provisional=provisional),
            curves.routenlp(routing, probs, "routenlp (no quality term)", grid=(1e6,), provisional=provisional)]


def sweep_curves(build, bars: Mapping[str, float], records, table, n_boot: int, routing=None) -> dict[str, Any]:
    """Every system's cost-quality curve over `table` (served or labelled answers), and the
    matched-quality headline."""
    from clients import curves
    from export.calibrate import router_pass_probabilities

    usable = [r for r in records if all(t in table.get(r["id"], {}) for t in bl.servable(r["task"]))]
    probs = router_pass_probabilities(build, usable)
    systems = [*routenlp_systems(routing or utility_routing(build), probs), *(curves.fixed(t) for t in TIERS), *peer_systems(build, bars)]
    return curves.sweep(systems, usable, table, n_boot=n_boot)


def offline_curves(build, pool: str = "dev", n_boot: int = N_BOOT, records=None) -> dict[str, Any]:
    """The curves over a build's labelled answers on `pool` (its records, or `records`): no
    server (the method's numbers before a repository is written; `routenlp bench --offline`)."""
    from clients import curves
    from export.calibrate import build_prices
    from export.serving_config_builder import effective_bars

    table = curves.table_from_answers(build.load_answers(pool), build_prices(build))
    return sweep_curves(build, effective_bars(build), records if records is not None else build.pools.flat(pool), table, n_boot)


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
        from routenlp_core.contract import ROUTED_POLICIES, ROUTER_ABLATION_POLICIES

        for policy in ROUTED_POLICIES:  # routenlp, then its cascade and router ablations
            if ROUTER_ABLATION_POLICIES.get(policy, "router") in ("router", *config.router_models):
                runs[policy] = timed(ServedPolicy(policy, caller))
        task_idx = task_indices(records)
        reference = reference_stats(runs[REFERENCE], records, task_idx)
        for policy, fitted in fit_baselines(build, config.bars):
            run = timed(policy)
            run.fitted = fitted
            runs[run.name] = run
    finally:
        caller.close()
    fixed = {name: run for name, run in runs.items() if name.startswith("always-")}
    table = served_table(fixed, records)
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
        "guarantee": guarantee_rows(build, config, records, table),
        "curves": sweep_curves(build, config.bars, records, table, n_boot),
        "latency_ms": {name: run.latency_ms for name, run in runs.items()},
    }
