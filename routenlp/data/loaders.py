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
from routenlp.tasks import get_task

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
