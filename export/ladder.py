"""The ladder table (issue 19): does the built portfolio behave like a model family on dev?

From the all-tier dev answers (answers/dev.jsonl: id -> tier -> answer with its prediction,
per-example quality and billed tokens) and the bars, per task and tier the dev quality with a 95%
bootstrap interval (the corpus metric recomputed on each resample of the task's dev records), T4's
lead over T2 with a paired interval, the nestedness P(T4 meets the bar | the cheapest serving tier
meets it), the oracle's quality and cost vs Always-T4 (per record the cheapest tier meeting the
bar: the router's own labels, export.router_loss.oracle_labels), and which ladder rules fail, in
words. Bars, prices and rule thresholds are inputs: the table judges whatever bars the build uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from export.quality import quality_matrix
from routenlp.metrics import corpus_score
from routenlp.metrics.task_bootstrap import Bootstrap, mean_quality, task_indices
from routenlp.portfolio import TIER_ORDER
from routenlp_core.tasks import TASK_NAMES

N_BOOT = 1000
TOP, SECOND = "t4", "t2"


@dataclass(frozen=True)
class LadderRules:
    """The thresholds of issue 19's ladder rules."""

    ordered_tasks: int = 5  # quality non-decreasing with price on at least this many tasks
    top_lead_tasks: int = 4  # T4's lead over T2 outside the 95% CI on at least this many tasks
    nestedness: float = 0.85  # per task
    oracle_quality_ratio: float = 0.97  # oracle quality >= this x Always-T4 ...
    oracle_cost_ratio: float = 0.35  # ... at a cost ratio <= this
    paper_bar_fraction: float = 0.8  # T4 >= this x the paper bar ...
    paper_bar_tasks: int = 3  # ... on at least this many tasks
    # Each T1 head keeps at least its dev quality before the ladder work (results/portfolio.json at 0b72410).
    t1_floors: Mapping[str, float] = field(default_factory=lambda: {"cs_intent": 0.54, "fin_ner": 0.86, "legal_clause": 0.29, "legal_risk": 0.69})


def ordering_issues(dev_quality: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Plain statements of where a more expensive tier scores below a cheaper one (each task's
    tiers in the order given: cheapest first)."""
    issues = []
    for task, scores in dev_quality.items():
        for cheap, dear in zip(scores, list(scores)[1:]):
            if scores[dear] < scores[cheap]:
                issues.append(f"{task}: {dear} ({scores[dear]:.3f}) < {cheap} ({scores[cheap]:.3f})")
    return issues


def _interval(values: np.ndarray) -> list[float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def _task_table(task: str, records: Sequence[Mapping], answers, tiers: Sequence[str], bar: float, n_boot: int, seed: int) -> dict[str, Any]:
    """One task's qualities with intervals, T4 - T2 (paired) and nestedness."""
    targets = [r["target"] for r in records]
    bootstrap = Bootstrap({task: np.arange(len(records))}, n_boot, seed)  # same resamples for every tier
    row: dict[str, Any] = {"n": len(records), "bar": bar, "tiers": {}}
    boot = {}
    for tier in tiers:
        predictions = [answers[r["id"]][tier]["prediction"] for r in records]
        boot[tier] = bootstrap.per_task(predictions, targets)[task]
        quality = corpus_score(task, predictions, targets)
        row["tiers"][tier] = {"quality": round(quality, 4), "ci95": _interval(boot[tier])}
    if TOP in boot and SECOND in boot:
        lead = row["tiers"][TOP]["quality"] - row["tiers"][SECOND]["quality"]
        row["t4_minus_t2"] = {"difference": round(lead, 4), "ci95": _interval(boot[TOP] - boot[SECOND])}
    quality, bars = quality_matrix(answers, records, {task: bar})
    meets = quality >= bars[:, None]
    cheapest_meets = meets[:, TIER_ORDER.index(tiers[0])]
    top_meets = meets[cheapest_meets, TIER_ORDER.index(TOP)]
    row["nestedness"] = {
        "cheapest": tiers[0],
        "value": round(float(top_meets.mean()), 4) if top_meets.size else None,
        "n": int(cheapest_meets.sum()),
    }
    return row


def oracle_vs_top(answers, records: Sequence[Mapping], bars: Mapping[str, float], prices: Mapping[str, float]) -> dict[str, Any]:
    """Per record the cheapest tier whose answer meets the bar (else the best answer), against
    Always-T4: macro-average quality ratio, mean-dollar cost ratio and the oracle's tier mix."""
    from export.router_loss import oracle_labels

    quality, bar = quality_matrix(answers, records, bars)
    chosen = [TIER_ORDER[i] for i in oracle_labels(quality, bar).tolist()]
    targets = [r["target"] for r in records]
    idx = task_indices(records)
    oracle_q, _ = mean_quality(idx, [answers[r["id"]][t]["prediction"] for r, t in zip(records, chosen)], targets)
    top_q, _ = mean_quality(idx, [answers[r["id"]][TOP]["prediction"] for r in records], targets)
    oracle_dollars = sum(answers[r["id"]][t]["tokens"] / 1000.0 * prices[t] for r, t in zip(records, chosen))
    top_dollars = sum(answers[r["id"]][TOP]["tokens"] / 1000.0 * prices[TOP] for r in records)
    return {
        "quality": round(oracle_q, 4),
        "always_t4_quality": round(top_q, 4),
        "quality_ratio": round(oracle_q / top_q, 4) if top_q else None,
        "cost_ratio": round(oracle_dollars / top_dollars, 4) if top_dollars else None,
        "mix": {tier: round(chosen.count(tier) / len(chosen), 4) for tier in TIER_ORDER},
    }


def ladder_table(
    answers: Mapping[str, Mapping[str, Mapping[str, Any]]],
    records: Sequence[Mapping],
    bars: Mapping[str, float],
    prices: Mapping[str, float],
    paper_bars: Mapping[str, float],
    rules: LadderRules = LadderRules(),
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """The ladder table of the dev answers: per-task rows, the oracle, and every rule with its
    verdict and, when it fails, why in words."""
    by_price = sorted(TIER_ORDER, key=lambda t: (prices[t], TIER_ORDER.index(t)))
    tasks = {}
    for task in TASK_NAMES:
        task_records = [r for r in records if r["task"] == task]
        if not task_records:
            continue
        tiers = [t for t in by_price if all(t in answers[r["id"]] for r in task_records)]
        tasks[task] = {**_task_table(task, task_records, answers, tiers, bars[task], n_boot, seed), "paper_bar": paper_bars[task]}
    oracle = oracle_vs_top(answers, [r for r in records if r["task"] in tasks], bars, prices)
    judged = judge(tasks, oracle, rules)
    return {"n_boot": n_boot, "seed": seed, "rules_config": asdict(rules) | {"t1_floors": dict(rules.t1_floors)}, "tasks": tasks, "oracle": oracle, "rules": judged,
            "failures": [r["detail"] for r in judged if not r["passed"]]}


def _q(row: Mapping, tier: str) -> float:
    return row["tiers"][tier]["quality"]


def judge(tasks: Mapping[str, Mapping], oracle: Mapping[str, Any], rules: LadderRules) -> list[dict[str, Any]]:
    """Each ladder rule: {"rule", "passed", "detail"}; detail says by how much when it fails."""
    verdicts = []

    def rule(name: str, passed: bool, detail: str) -> None:
        verdicts.append({"rule": name, "passed": bool(passed), "detail": detail})

    n = len(tasks)
    # 1. quality non-decreasing with price across the tiers serving the task
    drops = {task: ordering_issues({task: {t: _q(row, t) for t in row["tiers"]}}) for task, row in tasks.items()}
    ordered = sum(not d for d in drops.values())
    rule("quality non-decreasing with price", ordered >= min(rules.ordered_tasks, n),
         f"quality rises with price on {ordered} of {n} tasks (need {rules.ordered_tasks}); falls on "
         + "; ".join(issue for d in drops.values() for issue in d) if ordered < min(rules.ordered_tasks, n) else f"ordered on {ordered} of {n} tasks")
    # 2a. T4 best on every task
    beaten = {task: [f"{t} {_q(row, t):.3f}" for t in row["tiers"] if t != TOP and _q(row, t) > _q(row, TOP)] for task, row in tasks.items() if TOP in row["tiers"]}
    rule("T4 best on every task", not any(beaten.values()),
         "T4 is not the best tier on " + "; ".join(f"{task} (T4 {_q(tasks[task], TOP):.3f} < {', '.join(b)})" for task, b in beaten.items() if b) if any(beaten.values()) else "T4 best on every task")
    # 2b. T4's lead over T2 outside the 95% CI (paired bootstrap)
    leads = {task: row["t4_minus_t2"] for task, row in tasks.items() if "t4_minus_t2" in row}
    clear = [task for task, lead in leads.items() if lead["ci95"][0] > 0]
    unclear = [f"{task} {lead['difference']:+.3f} [{lead['ci95'][0]:+.3f}, {lead['ci95'][1]:+.3f}]" for task, lead in leads.items() if task not in clear]
    rule("T4's lead over T2 outside the 95% CI", len(clear) >= min(rules.top_lead_tasks, n),
         f"T4's lead over T2 is outside the 95% CI on {len(clear)} of {n} tasks (need {rules.top_lead_tasks}); not on " + "; ".join(unclear)
         if len(clear) < min(rules.top_lead_tasks, n) else f"clear on {len(clear)} of {n} tasks")
    # 3. nestedness per task
    loose = [f"{task} {row['nestedness']['value']:.3f} (n={row['nestedness']['n']})" if row["nestedness"]["value"] is not None
             else f"{task} undefined ({row['nestedness']['cheapest']} never meets the bar)"
             for task, row in tasks.items() if row["nestedness"]["value"] is None or row["nestedness"]["value"] < rules.nestedness]
    rule(f"nestedness >= {rules.nestedness} per task", not loose,
         f"P(T4 meets the bar | cheapest serving tier meets it) below {rules.nestedness} on " + "; ".join(loose) if loose else "nested on every task")
    # 4. oracle quality at a cost ratio
    q_ratio, c_ratio = oracle["quality_ratio"], oracle["cost_ratio"]
    oracle_ok = q_ratio is not None and c_ratio is not None and q_ratio >= rules.oracle_quality_ratio and c_ratio <= rules.oracle_cost_ratio
    rule("oracle quality vs Always-T4 at low cost", oracle_ok,
         f"oracle quality {q_ratio} x Always-T4 (need >= {rules.oracle_quality_ratio}) at cost {c_ratio} x (need <= {rules.oracle_cost_ratio})")
    # 5. T4 near the paper's bar
    near = {task: _q(row, TOP) / row["paper_bar"] for task, row in tasks.items() if TOP in row["tiers"] and row["paper_bar"]}
    reached = [task for task, ratio in near.items() if ratio >= rules.paper_bar_fraction]
    rule(f"T4 >= {rules.paper_bar_fraction} x paper bar", len(reached) >= min(rules.paper_bar_tasks, n),
         f"T4 reaches {rules.paper_bar_fraction} x the paper bar on {len(reached)} of {len(near)} tasks (need {rules.paper_bar_tasks}): "
         + "; ".join(f"{task} {ratio:.2f} x" for task, ratio in near.items()))
    # 6. T1 heads keep today's quality
    below = [f"{task} {_q(tasks[task], 't1'):.3f} < {floor}" if "t1" in tasks[task]["tiers"] else f"{task} has no T1 answers"
             for task, floor in rules.t1_floors.items() if task in tasks and ("t1" not in tasks[task]["tiers"] or _q(tasks[task], "t1") < floor)]
    rule("each T1 head keeps today's dev quality", not below, "T1 below its floor on " + "; ".join(below) if below else "every T1 head at or above its floor")
    return verdicts


def format_ladder(ladder: Mapping[str, Any]) -> str:
    """The printed ladder table: qualities with intervals, nestedness, the oracle and the rules."""
    from routenlp.table import format_table

    rows = []
    for task, row in ladder["tasks"].items():
        cells = {t: (f"{row['tiers'][t]['quality']:.3f} [{row['tiers'][t]['ci95'][0]:.3f}, {row['tiers'][t]['ci95'][1]:.3f}]" if t in row["tiers"] else "-") for t in TIER_ORDER}
        lead = row.get("t4_minus_t2")
        nested = row["nestedness"]
        rows.append({
            "task": task, "n": row["n"], "bar": row["bar"], **cells,
            "T4-T2 [95% CI]": f"{lead['difference']:+.3f} [{lead['ci95'][0]:+.3f}, {lead['ci95'][1]:+.3f}]" if lead else "-",
            "nested": "-" if nested["value"] is None else f"{nested['value']:.3f} (n={nested['n']})",
        })  # fmt: skip
    oracle = ladder["oracle"]
    lines = [
        f"ladder on dev (95% bootstrap CI, {ladder['n_boot']} resamples, seed {ladder['seed']}; nested = P(T4 meets the bar | cheapest serving tier meets it))",
        format_table(rows),
        f"oracle (cheapest tier meeting the bar per query) vs Always-T4: quality ratio {oracle['quality_ratio']}, cost ratio {oracle['cost_ratio']}; mix "
        + ", ".join(f"{t} {share:.2f}" for t, share in oracle["mix"].items()),
        "ladder rules:",
        *(f"  {'PASS' if r['passed'] else 'FAIL'} {r['rule']}: {r['detail']}" for r in ladder["rules"]),
    ]
    return "\n".join(lines)
