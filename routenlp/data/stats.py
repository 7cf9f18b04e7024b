"""Summary rows of a built benchmark (what `routenlp data stats` prints)."""

from __future__ import annotations

from pathlib import Path

from routenlp.data.records import SPLITS, load_records
from routenlp_core.paths import BENCHMARK_DIR
from routenlp_core.tasks import TASK_NAMES, get_task


def _split_order(path: Path) -> tuple[int, str]:
    return (SPLITS.index(path.stem) if path.stem in SPLITS else len(SPLITS), path.stem)


def benchmark_stats(bench_dir: str | Path = BENCHMARK_DIR) -> list[dict]:
    """One row per task and split file: n, mean input chars, and either the number of distinct
    labels (classification; fin_ner: entity tags other than O) or the mean target chars."""
    rows = []
    for task in TASK_NAMES:
        for path in sorted((Path(bench_dir) / task).glob("*.jsonl"), key=_split_order):
            records = load_records(path)
            n = len(records)
            row = {"task": task, "split": path.stem, "n": n,
                   "mean_input_chars": round(sum(len(r["text"]) for r in records) / n, 1) if n else 0.0,
                   "labels": None, "mean_target_chars": None}
            kind = get_task(task).kind
            if kind == "classification":
                row["labels"] = len({r["target"] for r in records})
            elif kind == "ner":
                row["labels"] = len({tag for r in records for tag in r["target"] if tag != "O"})
            else:
                row["mean_target_chars"] = round(sum(len(r["target"]) for r in records) / n, 1) if n else 0.0
            rows.append(row)
    return rows


def format_stats_table(rows: list[dict]) -> str:
    """Fixed-width text table of benchmark_stats rows ('-' where a column does not apply)."""
    columns = ("task", "split", "n", "mean_input_chars", "labels", "mean_target_chars")
    cells = [[("-" if row[c] is None else str(row[c])) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))) for line in cells]
    return "\n".join(lines)
