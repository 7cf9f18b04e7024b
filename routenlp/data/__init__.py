"""The six-task benchmark: raw-format loaders, the deterministic build, and the committed splits."""

from routenlp.data.build import build_benchmark
from routenlp.data.loaders import LOADERS, convert_raw, load_raw
from routenlp.data.records import SPLITS, load_records, load_split
from routenlp.data.stats import benchmark_stats, format_stats_table
from routenlp_core.labels import NONE_LABEL, task_labels

__all__ = [
    "LOADERS",
    "NONE_LABEL",
    "SPLITS",
    "benchmark_stats",
    "build_benchmark",
    "convert_raw",
    "format_stats_table",
    "load_raw",
    "load_records",
    "load_split",
    "task_labels",
]
