"""results/portfolio.json and the printed tables of `routenlp export`."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from export.ladder import format_ladder, ladder_table, ordering_issues
from routenlp.metrics import metric_name
from routenlp.portfolio import TIER_ORDER
from routenlp.table import format_table
from routenlp_core.tasks import TASK_NAMES


def tier_costs(dev_answers: Mapping[str, Mapping[str, Mapping]], portfolio) -> dict[str, dict[str, float]]:
    """Mean billed tokens and dollars per dev query, per tier (T1 only answers structured tasks)."""
    costs = {}
    for tier in portfolio.ordered_tiers():
        tokens = [answers[tier.name]["tokens"] for answers in dev_answers.values() if tier.name in answers]
        mean_tokens = statistics.fmean(tokens) if tokens else 0.0
        costs[tier.name] = {"price_per_1k_tokens": tier.price_per_1k_tokens, "mean_tokens": round(mean_tokens, 1), "mean_dollars_per_query": round(tier.cost(mean_tokens), 6)}
    return costs


def portfolio_report(build, steps: Mapping[str, Any], repository: Mapping[str, Any], dev_answers) -> dict[str, Any]:
    portfolio = build.portfolio
    router = steps["router"]
    dev_quality, bars = router["dev_quality"], router["bars"]
    quality = {
        task: {
            "metric": metric_name(task),
            "tiers": dev_quality[task],
            "paper_bar": portfolio.tasks[task].paper_bar,
            "effective_bar": bars[task],
            "bar_source": portfolio.tasks[task].bar_source(bars[task]),
        }
        for task in TASK_NAMES
    }
    return {
        "portfolio": portfolio.name,
        "profile": build.profile.name,
        "build_seconds": steps.get("seconds"),
        "step_seconds": steps.get("step_seconds"),
        "stage_build_seconds": steps.get("stage_build_seconds"),
        "full_build_seconds": steps.get("full_build_seconds"),
        "tiers": {
            t.name: {"kind": t.kind, "price_per_1k_tokens": t.price_per_1k_tokens, "checkpoint": t.checkpoint or "trained here", "arch": dict(t.arch), **({"parameters": steps["decoders"][t.name].get("parameters")} if t.name in steps["decoders"] else {})}
            for t in portfolio.ordered_tiers()
        },
        "quality": quality,
        "cost": tier_costs(dev_answers, portfolio),
        "router": {"dev_accuracy_vs_oracle": router["dev_accuracy_vs_oracle"], "train": router["train"]},
        "router_ablations": steps.get("router_ablations") or {},
        "onnx": steps["onnx"],
        "repository": dict(repository),
        "ordering_issues": ordering_issues(dev_quality),
        "ladder": ladder_table(
            dev_answers, build.pools.flat("dev"), bars,
            prices={t.name: t.price_per_1k_tokens for t in portfolio.ordered_tiers()},
            paper_bars={task: portfolio.tasks[task].paper_bar for task in TASK_NAMES},
        ),
    }


def write_report(report: Mapping[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path


def format_report(report: Mapping[str, Any]) -> str:
    quality_rows = [
        {"task": task, "metric": q["metric"], **{t: f"{q['tiers'][t]:.3f}" if t in q["tiers"] else "-" for t in TIER_ORDER}, "paper bar": q["paper_bar"], "effective bar": q["effective_bar"], "bar from": q["bar_source"]}
        for task, q in report["quality"].items()
    ]
    cost_rows = [{"tier": t, **c} for t, c in report["cost"].items()]
    ablations = report.get("router_ablations") or {}
    parity_rows = [{"model": m, **p} for m, p in report["onnx"]["parity"].items()] + [{"model": m, **a["parity"]} for m, a in ablations.items()]
    sections = [
        f"portfolio {report['portfolio']} / profile {report['profile']}: this run {report['build_seconds']}s; "
        + (f"a build from scratch {report['full_build_seconds']}s (sum of each stage's build time)" if report.get("full_build_seconds") else "build time from scratch unknown (stages built before build times were recorded)"),
        "dev quality per task and tier\n" + format_table(quality_rows),
        "cost per tier (dev)\n" + format_table(cost_rows),
        f"router accuracy vs oracle tier (dev): {report['router']['dev_accuracy_vs_oracle']:.3f}"
        + "".join(f"; {name} ({', '.join(f'{k}={v}' for k, v in a['loss_weights'].items())}): {a['dev_accuracy_vs_oracle']:.3f}" for name, a in ablations.items()),
        "ONNX parity (torch vs ONNX Runtime, dev inputs)\n" + format_table(parity_rows),
        "latency torch vs ONNX Runtime (ms, median)\n" + format_table(report["onnx"]["latency"]),
        f"repository: version {report['repository'].get('version')} ({report['repository'].get('target')}) at {report['repository'].get('path')}",
    ]
    if report["ordering_issues"]:
        sections.append("tiers not ordered by quality:\n  " + "\n  ".join(report["ordering_issues"]))
    if report.get("ladder"):  # reports written before the ladder table have none
        sections.append(format_ladder(report["ladder"]))
    return "\n\n".join(sections)
