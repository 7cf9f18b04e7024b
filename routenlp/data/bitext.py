"""cs_response from the Bitext customer-support csv: instruction -> agent response."""

from __future__ import annotations

import csv
from pathlib import Path

from routenlp.data.rawpath import resolve_file
from routenlp.data.records import make_record

TASK = "cs_response"


def load_bitext(path: str | Path) -> list[dict]:
    """One record per row; the {{placeholders}} in responses are kept verbatim (the model learns them)."""
    file = resolve_file(path, "bitext_customer_support.csv", "*.csv")
    with file.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        make_record(
            TASK,
            f"{TASK}:{file.stem}:{i:05d}",
            row["instruction"].strip(),
            row["response"].strip(),
            intent=row.get("intent", ""),
        )
        for i, row in enumerate(rows)
        if row.get("instruction", "").strip() and row.get("response", "").strip()
    ]
