"""Label sets of the classification tasks (and the NER tag types), in one place.

The CUAD categories kept for legal_clause are the 12 most frequent *clause-like* categories of the
raw data (ranked by the number of contract segments they label); the entity-like fields
(Document Name, Parties, Agreement Date, Effective Date: names and dates, not sentences) and the
25 rarer categories are left out, their sentences count as "none". BANKING77's 77 intents come from its categories.json and
are recorded in the benchmark manifest.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from routenlp_core.paths import BENCHMARK_DIR

NONE_LABEL = "none"

# CLAUDETTE tag suffix (1 fair, 2 potentially unfair, 3 clearly unfair) -> risk label.
RISK_LEVELS: dict[int, str] = {1: "fair", 2: "potentially_unfair", 3: "clearly_unfair"}
RISK_LABELS: tuple[str, ...] = (NONE_LABEL, *RISK_LEVELS.values())

# CUAD master_clauses.csv column -> legal_clause label, most frequent first (ties broken by this order).
CLAUSE_CATEGORIES: dict[str, str] = {
    "License Grant": "license_grant",
    "Cap on Liability": "cap_on_liability",
    "Insurance": "insurance",
    "Audit Rights": "audit_rights",
    "Anti-Assignment": "anti_assignment",
    "Minimum Commitment": "minimum_commitment",
    "Revenue/Profit Sharing": "revenue_profit_sharing",
    "Governing Law": "governing_law",
    "Expiration Date": "expiration_date",
    "Exclusivity": "exclusivity",
    "Post-Termination Services": "post_termination_services",
    "Rofr/Rofo/Rofn": "rofr_rofo_rofn",
}
CLAUSE_LABELS: tuple[str, ...] = (NONE_LABEL, *CLAUSE_CATEGORIES.values())

NER_TYPES: tuple[str, ...] = ("PER", "LOC", "ORG", "MISC")

FIXED_LABELS: dict[str, tuple[str, ...]] = {"legal_risk": RISK_LABELS, "legal_clause": CLAUSE_LABELS}


def snake_label(name: str) -> str:
    """'Cap on Liability' -> 'cap_on_liability': one label style across tasks (BANKING77 uses it)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@lru_cache(maxsize=None)
def _manifest_labels(bench_dir: str) -> dict:
    manifest = Path(bench_dir) / "manifest.json"
    if not manifest.is_file():
        return {}
    return json.loads(manifest.read_text(encoding="utf-8")).get("labels", {})


def task_labels(task: str, bench_dir: str | Path = BENCHMARK_DIR) -> tuple[str, ...]:
    """Known labels of a classification task; empty for tasks without a closed label set."""
    if task in FIXED_LABELS:
        return FIXED_LABELS[task]
    return tuple(_manifest_labels(str(bench_dir)).get(task, ()))
