"""Task -> raw-format loader, so any file or folder in a task's raw format can be scored."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from routenlp.data.banking77 import load_banking77
from routenlp.data.bitext import load_bitext
from routenlp.data.claudette import load_claudette
from routenlp.data.conll import load_conll
from routenlp.data.cuad import load_cuad
from routenlp.data.ectsum import load_ectsum
from routenlp.data.records import write_records
from routenlp_core.paths import BENCHMARK_DIR
from routenlp_core.tasks import get_task

LOADERS: dict[str, Callable[[str | Path], list[dict]]] = {
    "cs_intent": load_banking77,
    "cs_response": load_bitext,
    "fin_ner": load_conll,
    "fin_summary": load_ectsum,
    "legal_clause": load_cuad,
    "legal_risk": load_claudette,
}


def load_raw(task: str, path: str | Path) -> list[dict]:
    """Normalized records of a raw file or folder in the task's source format (all of them:
    no sampling, no downsampling of "none")."""
    return LOADERS[get_task(task).name](path)


def convert_raw(task: str, raw: str | Path, out: str | Path) -> int:
    """Write every record of a raw file or folder (e.g. an official test split) to `out` as
    benchmark JSONL, in the loader's order, with no sampling or splitting; return the count.
    Refuses to write into the committed benchmark, which only `routenlp data build` writes."""
    out = Path(out).resolve()
    if out.is_relative_to(BENCHMARK_DIR.resolve()):
        raise ValueError(f"{out} is inside {BENCHMARK_DIR}: write converted splits elsewhere")
    records = load_raw(task, raw)
    if not records:
        raise ValueError(f"no {task} records in {raw}")
    return write_records(out, records)
