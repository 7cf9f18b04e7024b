"""Where things live. Everything is relative to the repository root so a fresh clone works as is."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# The committed, processed benchmark (JSONL per task and split).
BENCHMARK_DIR = REPO_ROOT / "benchmark"
RESULTS_DIR = REPO_ROOT / "results"
MODEL_REPOSITORY_DIR = REPO_ROOT / "model_repository"
# Built artefacts (trained models, caches); not committed.
ARTIFACTS_DIR = Path(os.environ.get("ROUTENLP_ARTIFACTS", REPO_ROOT / "artifacts"))
# Runtime state of `routenlp serve` (logs, admin key) and the escalation log's one default place;
# ROUTENLP_ESCALATION_LOG overrides the log's path (a container points it at its volume).
STATE_DIR = Path(os.environ.get("ROUTENLP_STATE", REPO_ROOT / "var"))
ESCALATION_LOG_FILE = "escalation_log.sqlite"
DEFAULT_ESCALATION_LOG = STATE_DIR / ESCALATION_LOG_FILE


def shared_data_dir() -> Path:
    """Raw datasets; only needed to rebuild the committed benchmark (a user's clone has none)."""
    return Path(os.environ.get("ROUTENLP_RAW_DATA", REPO_ROOT.parent / "shared" / "data"))
