"""Per-task quality metrics, resolved through the task registry (tasks.py names a METRICS key).

    example_score(task, prediction, reference)  per-example score in [0, 1] (router labels)
    corpus_score(task, predictions, references) the task's official metric over a set
    metric_name(task)                           what to print beside the number

Predictions are a label string (classification), a list of tags (fin_ner) or text (generation).
"""

from __future__ import annotations

from collections.abc import Sequence

from routenlp_core.stats import bootstrap_ci, wilson_interval
from routenlp_core.tasks import get_task

from .base import Metric
from .classification import NO_CLAUSE, Accuracy, ClauseF1, MacroF1
from .generation import RougeL
from .ner import EntityF1
from .response import LAYERS_ENV, MODEL_ENV, ResponseQuality, select_response_backend

METRICS: dict[str, Metric] = {
    metric.key: metric
    for metric in (MacroF1(), Accuracy(), ClauseF1(), EntityF1(), RougeL(), ResponseQuality())
}


def metric_for(task: str) -> Metric:
    """The metric object of a task; an unknown task raises UnknownTaskError listing valid ones."""
    return METRICS[get_task(task).metric]


def example_score(task: str, prediction, reference) -> float:
    return metric_for(task).example(prediction, reference)


def corpus_score(task: str, predictions: Sequence, references: Sequence) -> float:
    return metric_for(task).corpus(predictions, references)


def secondary_scores(task: str, predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Numbers to report beside the official one, e.g. macro-F1 for legal_risk."""
    return metric_for(task).secondary(predictions, references)


def metric_name(task: str) -> str:
    return metric_for(task).name


def configure_response_quality(model_dir=None, num_layers: int | None = None) -> str:
    """Point cs_response scoring at a local BERTScore checkpoint (None: env var, else chrF)."""
    return METRICS[ResponseQuality.key].configure(model_dir, num_layers)


__all__ = [
    "LAYERS_ENV",
    "METRICS",
    "MODEL_ENV",
    "NO_CLAUSE",
    "Metric",
    "bootstrap_ci",
    "configure_response_quality",
    "corpus_score",
    "example_score",
    "metric_for",
    "metric_name",
    "secondary_scores",
    "select_response_backend",
    "wilson_interval",
]
