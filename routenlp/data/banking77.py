"""cs_intent from BANKING77: train.csv / test.csv with columns text,category."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from routenlp.data.rawpath import resolve_file
from routenlp.data.records import make_record

TASK = "cs_intent"


def load_banking77(path: str | Path) -> list[dict]:
    """One record per row; label = the category string. path: a csv file or the banking77/ folder."""
    file = resolve_file(path, "train.csv", "*.csv")
    with file.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        make_record(TASK, f"{TASK}:{file.stem}:{i:05d}", row["text"].strip(), row["category"].strip())
        for i, row in enumerate(rows)
        if row.get("text", "").strip()
    ]


def banking77_labels(path: str | Path) -> list[str]:
    """The 77 intents from categories.json next to the csv (falls back to the labels seen)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    listing = folder / "categories.json"
    if listing.is_file():
        return sorted(json.loads(listing.read_text(encoding="utf-8")))
    return sorted({r["target"] for r in load_banking77(path)})
