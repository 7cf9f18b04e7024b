"""The co-optimization loop's outputs: results/coopt.json, results/coopt.md and the convergence plot."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coopt.loop import cost_reduction
from routenlp.table import format_table


def iteration_rows(result: Mapping[str, Any]) -> list[dict[str, str]]:
    """The paper's Table 4 per run: one row per iteration."""
    rows = []
    for mode, iterations in result["runs"].items():
        for row in iterations:
            if "deploy_error" in row:
                rows.append({"run": mode, "iter": str(row["iteration"]), "cost ratio": "not deployed: " + row["deploy_error"][:60]})
                continue
            distilled = row.get("distilled") or {}
            swap = row.get("swap") or {}
            rows.append({
                "run": mode,
                "iter": str(row["iteration"]),
                "version": str(row["repository_version"]),
                "cost ratio": f"{row['cost_ratio']:.4f}",
                "quality ratio": f"{row['quality_ratio']:.4f}",
                "router acc.": f"{row['router_accuracy']:.3f}",
                "T1+T2": f"{row['t1_t2_share']:.3f}",
                "failures": "-" if row["failures"] is None else str(row["failures"]),
                "clusters": str(row["clusters_used"]),
                "teacher asked/kept": "-" if not distilled else f"{distilled['asked_teacher']}/{distilled['kept']}",
                "swap sent/failed": "-" if not swap else f"{swap['sent']}/{swap['failed']}",
            })  # fmt: skip
    return rows


def summary_rows(result: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for mode, iterations in result["runs"].items():
        measured = [r for r in iterations if r.get("cost_ratio") is not None]
        reduction = cost_reduction(iterations)
        rows.append({
            "run": mode,
            "iterations": str(len(measured) - 1),
            "cost ratio start -> end": f"{measured[0]['cost_ratio']:.4f} -> {measured[-1]['cost_ratio']:.4f}",
            "cost reduction": "-" if reduction is None else f"{reduction * 100:.1f}%",
            "quality ratio start -> end": f"{measured[0]['quality_ratio']:.4f} -> {measured[-1]['quality_ratio']:.4f}",
            "teacher $": f"{sum((r.get('distilled') or {}).get('teacher_dollars', 0.0) for r in iterations):.2f}",
        })  # fmt: skip
    return rows


GOAL_RATIO, GOAL_QUALITY = 1.5, 0.01  # issue 20: targeted cuts cost >= 1.5 x random's, quality within 0.01 of the base


def comparison_rows(result: Mapping[str, Any]) -> list[dict[str, str]]:
    """Targeted vs random per iteration (same teacher budget): cost reduction from the base and
    quality change, and whether the targeted one meets the goal at that iteration."""
    runs = result["runs"]
    if "targeted" not in runs or "random" not in runs:
        return []
    rows = []
    for targeted, random in zip(runs["targeted"][1:], runs["random"][1:]):
        if targeted.get("cost_ratio") is None or random.get("cost_ratio") is None:
            break
        pair = {"targeted": targeted, "random": random}
        cut = {name: 1 - row["cost_ratio"] / runs[name][0]["cost_ratio"] for name, row in pair.items()}
        dq = {name: row["quality_ratio"] - runs[name][0]["quality_ratio"] for name, row in pair.items()}
        ratio = cut["targeted"] / cut["random"] if cut["random"] > 0 else None
        met = cut["targeted"] > 0 and (ratio is None or ratio >= GOAL_RATIO) and dq["targeted"] >= -GOAL_QUALITY
        rows.append({
            "iter": str(targeted["iteration"]),
            "teacher asked": str((targeted.get("distilled") or {}).get("asked_teacher", "-")),
            "cost cut targeted": f"{cut['targeted'] * 100:.1f}%", "cost cut random": f"{cut['random'] * 100:.1f}%",
            "targeted / random": "-" if ratio is None else f"{ratio:.2f}",
            "quality change targeted": f"{dq['targeted']:+.4f}", "quality change random": f"{dq['random']:+.4f}",
            f"goal (>= {GOAL_RATIO} x, >= -{GOAL_QUALITY})": "met" if met else "missed",
        })  # fmt: skip
    return rows


def comparison_section(result: Mapping[str, Any]) -> list[str]:
    rows = comparison_rows(result)
    if not rows:
        return []
    return ["## Targeted vs random per iteration (same teacher budget)", "", format_table(rows, markdown=True), ""]


def cluster_rows(result: Mapping[str, Any], run: str = "targeted", limit: int = 10) -> list[dict[str, str]]:
    """The largest failure clusters (by size x gap) of a run's first iteration, with examples."""
    first = result["clusters"].get(f"{run}/1", [])
    rows = []
    for cluster in sorted(first, key=lambda c: -c["priority"])[:limit]:
        rows.append({
            "task": cluster["task"], "size": str(cluster["size"]), "mean gap": f"{cluster['mean_gap']:.3f}", "priority": f"{cluster['priority']:.2f}",
            "tiers": ", ".join(f"{t}:{n}" for t, n in cluster["tiers"].items()),
            "example queries": " / ".join(e.replace("\n", " ")[:90] for e in cluster["examples"][:2]),
        })  # fmt: skip
    return rows


def crash_lines(crashes: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per tritonserver death the loop survived (restarted, then the phase redone)."""
    return [f"- tritonserver died during {c['during']}: {c['ended']}; ready again after {c['restart_s']} s, redone" for c in crashes]


def plot_convergence(result: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cost_ax, quality_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, iterations in result["runs"].items():
        measured = [r for r in iterations if r.get("cost_ratio") is not None]
        x = [r["iteration"] for r in measured]
        cost_ax.plot(x, [r["cost_ratio"] for r in measured], marker="o", label=mode)
        quality_ax.plot(x, [r["quality_ratio"] for r in measured], marker="o", label=mode)
    how = "replayed" if result.get("replayed") else "served"
    cost_ax.set(title=f"cost ratio vs Always-T4 (dev, {how})", xlabel="iteration", ylabel="cost ratio")
    quality_ax.set(title=f"quality ratio vs Always-T4 (dev, {how})", xlabel="iteration", ylabel="quality ratio")
    for ax in (cost_ax, quality_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown(result: Mapping[str, Any], command: str, plot_name: str) -> str:
    totals = result["swap_totals"]
    replayed = bool(result.get("replayed"))
    how = [
        f"Command: `{command}`. Nothing is served: every cost and quality ratio replays the serving code's",
        "routing (rules calibrated afresh on each iteration's calibration answers) over the recorded answers",
        f"of each iteration's tiers on the {result['dev_records']} dev records, against Always-T4 over the same",
        "answers; the teacher's answers are T4's recorded ones (coopt/replayed.py).",
    ] if replayed else [
        f"Command: `{command}`. Every cost and quality ratio is measured by routing the {result['dev_records']} dev records through the",
        "running tritonserver after the iteration's repository version went live, against Always-T4 on the same records.",
    ]  # fmt: skip
    lines = [
        "# RouteNLP co-optimization loop (" + ("replayed over the portfolio pack" if replayed else "served") + ")",
        "",
        *how,
        f"Failures are mined on the {result['pool_records']}-record router pool (held out of tier training); the random run asks",
        "T4 for as many random pool queries as the targeted run asked at the same iteration (same budget).",
        "",
        "## Summary",
        "",
        format_table(summary_rows(result), markdown=True),
        "",
        "## Iterations",
        "",
        format_table(iteration_rows(result), markdown=True),
        "",
        *comparison_section(result),
        *([] if replayed else [
            f"Live swaps under traffic: {totals['swaps']} swaps, {totals['sent']} requests sent during them,"
            f" {totals['failed']} failed."
        ]),
        *crash_lines(result["server_crashes"]),
        "",
        f"![convergence](plots/{plot_name})",
        "",
        "## Largest failure clusters (targeted run, iteration 1)",
        "",
        format_table(cluster_rows(result), markdown=True) if cluster_rows(result) else "(no clusters)",
        "",
    ]
    if result.get("promoted") and replayed:
        best = result["promoted"]["build"]
        lines += [f"The targeted run's best build (lowest cost ratio within the quality tolerance): {best}.", ""]
    elif result.get("promoted"):
        promoted = result["promoted"]
        lines += [f"Left live: repository version {promoted['version']} (the targeted run's best, from version {promoted['from_version']}).", ""]
    return "\n".join(lines)


def write_outputs(result: Mapping[str, Any], results_dir: Path, command: str) -> dict[str, str]:
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / "coopt.json"
    json_path.write_text(json.dumps({"command": command, **result}, indent=2, sort_keys=True) + "\n")
    plot_path = plot_convergence(result, results_dir / "plots" / "coopt_convergence.png")
    md_path = results_dir / "coopt.md"
    md_path.write_text(markdown(result, command, plot_path.name))
    return {"json": str(json_path), "report": str(md_path), "plot": str(plot_path)}


def print_tables(result: Mapping[str, Any], out=print) -> None:
    out(format_table(iteration_rows(result)))
    out("")
    out(format_table(summary_rows(result)))

