"""The six-task benchmark registry: one place that names each task, its kind, metric and quality bar."""

from __future__ import annotations

from dataclasses import dataclass

from routenlp_core.contract import TIERS


class UnknownTaskError(ValueError):
    """Raised for a task name that is not registered; the message lists the valid ones."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    domain: str
    # "classification" (one label per text), "ner" (token tags) or "generation" (free text).
    kind: str
    # Key into routenlp.metrics.METRICS.
    metric: str
    # The paper's absolute quality bar (DESIGN.md); the portfolio config may add a relative default.
    paper_bar: float
    source: str

    @property
    def structured(self) -> bool:
        """Structured tasks have a T1 encoder head; generation tasks do not."""
        return self.kind != "generation"


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("cs_intent", "customer_service", "classification", "macro_f1", 0.92, "BANKING77"),
        TaskSpec("cs_response", "customer_service", "generation", "response_quality", 0.65, "Bitext"),
        TaskSpec("fin_ner", "finance", "ner", "entity_f1", 0.90, "SEC filings (FIN5)"),
        TaskSpec("fin_summary", "finance", "generation", "rouge_l", 0.42, "ECTSum"),
        TaskSpec("legal_clause", "legal", "classification", "clause_f1", 0.88, "CUAD"),
        TaskSpec("legal_risk", "legal", "classification", "accuracy", 0.82, "CLAUDETTE"),
    )
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}") from None


def servable_tiers(task: str) -> tuple[str, ...]:
    """The tiers that serve a task, cheapest first: T1 heads exist only for the structured tasks."""
    return TIERS if get_task(task).structured else TIERS[1:]
