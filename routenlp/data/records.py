"""The normalized record every loader returns, and the JSONL files the benchmark is stored in.

A record is a JSON-serializable dict: {"id", "task", "text", "target"} plus optional metadata
("doc" groups records of one source document so splits never cut through a document; "tokens"
for fin_ner). target is a label string (classification), a list of IO tags (fin_ner) or the
reference text (generation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from routenlp_core.paths import BENCHMARK_DIR
from routenlp_core.tasks import get_task

SPLITS: tuple[str, ...] = ("train", "calibration", "dev")
# The confirm split (drawn once by clients.confirm_eval from raw records no split holds) is kept
# beside the splits: benchmark/confirm.jsonl.
CONFIRM_FILE = "confirm.jsonl"
# The rest of a task's training portion beyond the train cap (routenlp.data.build.TRAIN_MORE_TASKS).
TRAIN_MORE_SPLIT = "train_more"
# Longest model input kept per task (characters); longer inputs are cut at a word boundary so the
# committed benchmark stays small and fits the small tiers' context. Targets are never cut.
MAX_INPUT_CHARS: dict[str, int] = {
    "cs_intent": 1000,
    "cs_response": 1000,
    "fin_summary": 3000,
    "legal_clause": 1000,
    "legal_risk": 1000,
}
# The whole-transcript fin_summary documents are the long-input stress set; most fit whole.
MAX_DOCUMENT_CHARS = 30000


def truncate_text(text: str, max_chars: int) -> str:
    """Cut text to at most max_chars, at the last whitespace if there is one in the second half."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return cut[:space] if space > max_chars // 2 else cut


def make_record(task: str, rid: str, text: str, target: Any, max_chars: int | None = None, **extra: Any) -> dict:
    """Build one normalized record; extra keys (doc, tokens, metadata) are kept as given."""
    get_task(task)  # fail early on a typo in a loader
    limit = MAX_INPUT_CHARS.get(task) if max_chars is None else max_chars
    record = {"id": rid, "task": task, "text": text if limit is None else truncate_text(text, limit), "target": target}
    record.update(extra)
    return record


def record_group(record: dict) -> str:
    """The unit a split must not cut: the source document when known, else the record itself."""
    return record.get("doc") or record["id"]


def dumps_record(record: dict) -> str:
    # Sorted keys, compact separators, no ASCII escaping: stable, small, readable bytes.
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def write_records(path: Path, records: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [dumps_record(r) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def load_records(path: str | Path) -> list[dict]:
    """Read a benchmark JSONL file (one record per line; blank lines ignored)."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def split_path(task: str, split: str, bench_dir: Path = BENCHMARK_DIR) -> Path:
    return Path(bench_dir) / get_task(task).name / f"{split}.jsonl"


def load_split(task: str, split: str, bench_dir: str | Path = BENCHMARK_DIR) -> list[dict]:
    """Records of one committed split (train, calibration, dev; fin_summary also has documents)."""
    path = split_path(task, split, Path(bench_dir))
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.jsonl"))
        raise FileNotFoundError(
            f"no split {split!r} for task {task!r} at {path}; available: {', '.join(available) or 'none'}"
            " (rebuild with `routenlp data build`)"
        )
    return load_records(path)
