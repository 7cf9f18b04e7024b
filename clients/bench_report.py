"""The bench's outputs: results/main_table.json, a Markdown report and its matplotlib plots."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from routenlp.table import format_table

MAIN_TABLE_KEYS = ("name", "quality_ratio", "quality_ratio_ci95", "cost_ratio", "p50_ms", "p99_ms", "sla_violation", "escalation_rate", "errors")


def table_rows(bench: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for s in bench["systems"]:
        low, high = s["quality_ratio_ci95"]
        rows.append({
            "system": s["name"],
            "quality ratio [95% CI]": f"{s['quality_ratio']:.3f} [{low:.3f}, {high:.3f}]",
            "cost ratio": f"{s['cost_ratio']:.4f}",
            "p50 ms": f"{s['p50_ms']:.1f}",
            "p99 ms": f"{s['p99_ms']:.1f}",
            "SLA viol.": f"{s['sla_violation']:.3f}",
            "escalated": f"{s['escalation_rate']:.3f}",
            "errors": str(s["errors"]),
            "mix t1/t2/t3/t4": "/".join(f"{v:.2f}" for v in s["mix"].values()),
        })  # fmt: skip
    return rows


def task_rows(bench: Mapping[str, Any]) -> list[dict[str, str]]:
    systems = bench["systems"]
    rows = []
    for task, bar in bench["bars"].items():
        row = {"task": task, "bar": f"{bar:.3f}"}
        for s in systems:
            q = s["quality_by_task"].get(task)
            row[s["name"]] = "-" if q is None else f"{q:.3f}" + ("" if q >= bar else "*")
        rows.append(row)
    return rows


def matched_table(bench: Mapping[str, Any]) -> list[dict[str, str]]:
    """Each system's cost ratio at quality ratio >= 0.97 of Always-T4 (offline curves over the
    served answers) and the paired bootstrap CI of its difference to RouteNLP."""
    rows = []
    for r in bench["curves"]["headline"]:
        ci = r.get("diff_vs_routenlp_ci95")
        rows.append({"system": r["name"], "cost ratio at match": "not reached" if r["cost_ratio_at_match"] is None else f"{r['cost_ratio_at_match']:.4f}",
                     "knob": "-" if r["knob"] is None else f"{r['knob']:g}", "minus RouteNLP, 95% CI": "-" if not ci else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"})
    return rows


def plot(bench: Mapping[str, Any], out_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    systems = bench["systems"]
    paths = {}

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, entry in bench["curves"]["curves"].items():
        points = sorted(entry["curve"], key=lambda c: c["cost_ratio"])
        if len(points) > 1:
            ax.plot([c["cost_ratio"] for c in points], [c["quality_ratio"] for c in points], linewidth=2 if name == "routenlp" else 1, alpha=0.7, label=name)
    ax.axhline(bench["curves"]["match_ratio"], color="grey", linestyle=":", linewidth=1)
    ax.legend(fontsize=6, loc="lower right")
    for s in systems:
        ax.scatter(s["cost_ratio"], s["quality_ratio"], s=60 if s["name"] == "routenlp" else 30, marker="*" if s["name"] == "routenlp" else "o")
        ax.annotate(s["name"], (s["cost_ratio"], s["quality_ratio"]), fontsize=8, xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("cost ratio vs Always-T4")
    ax.set_ylabel("quality ratio vs Always-T4")
    ax.set_title("Quality vs cost (served, same records)")
    ax.grid(alpha=0.3)
    paths["pareto"] = _save(fig, out_dir / "pareto.png")

    routenlp = next(s for s in systems if s["name"] == "routenlp")
    tasks = list(routenlp["mix_by_task"])
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = np.zeros(len(tasks))
    for tier in ("t1", "t2", "t3", "t4"):
        counts = np.array([routenlp["mix_by_task"][t][tier] for t in tasks], dtype=float)
        totals = np.array([sum(routenlp["mix_by_task"][t].values()) for t in tasks], dtype=float)
        share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        ax.bar(tasks, share, bottom=bottom, label=tier)
        bottom += share
    ax.set_ylabel("share of requests answered")
    ax.set_title("RouteNLP routing mix per task")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    paths["mix"] = _save(fig, out_dir / "routing_mix.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in bench["latency_ms"].items():
        if name == "oracle":
            continue
        xs = np.sort(values)
        ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=name, linewidth=2 if name == "routenlp" else 1)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms, client side)")
    ax.set_ylabel("CDF")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    paths["latency_cdf"] = _save(fig, out_dir / "latency_cdf.png")
    return paths


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)


def write_outputs(bench: Mapping[str, Any], results_dir: Path, command: str) -> dict[str, str]:
    results_dir.mkdir(parents=True, exist_ok=True)
    main_table = [{k: s[k] for k in MAIN_TABLE_KEYS} for s in bench["systems"]]
    (results_dir / "main_table.json").write_text(json.dumps(main_table, indent=2) + "\n")
    (results_dir / "bench.json").write_text(json.dumps({k: v for k, v in bench.items() if k != "latency_ms"}, indent=2, sort_keys=True) + "\n")
    plots = plot(bench, results_dir / "plots")
    lines = [
        "# RouteNLP evaluation (served)",
        "",
        f"Command: `{command}`. {bench['records']} records per system, concurrency {bench['concurrency']}; every number comes",
        "from requests answered by the running tritonserver. Quality ratio = macro-average over tasks of the task metric,",
        "divided by Always-T4's on the same records (95% CI: paired bootstrap, stratified by task). Cost ratio = dollars",
        "per request / Always-T4's. The oracle is the hindsight lower bound over the fixed-tier answers.",
        "",
        "## Systems",
        "",
        format_table(table_rows(bench), markdown=True),
        "",
        "## Quality per task (`*` = below the task's bar)",
        "",
        format_table(task_rows(bench), markdown=True),
        "",
        f"## Cost at matched quality (quality ratio >= {bench['curves']['match_ratio']}; curves swept offline over the served answers)",
        "",
        format_table(matched_table(bench), markdown=True),
        "",
        "## The cascade's promise on served answers: realised regret per (task, tier), Wilson 95%",
        "",
        format_table(bench["guarantee"], markdown=True) if bench["guarantee"] else "(uncalibrated)",
        "",
        "## Plots",
        "",
        *[f"![{name}](plots/{Path(path).name})" for name, path in plots.items()],
        "",
    ]
    (results_dir / "report.md").write_text("\n".join(lines))
    return {"main_table": str(results_dir / "main_table.json"), "report": str(results_dir / "report.md"), **plots}
