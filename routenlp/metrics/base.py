"""What every task metric provides, and the input checks they share."""

from __future__ import annotations

from collections.abc import Sequence


class Metric:
    """One task metric: a per-example score (router labels) and the official corpus score.

    Subclasses set `key` (the name tasks.py uses) and `name` (for reports) and implement
    `example`; `corpus` defaults to the mean of per-example scores.
    """

    key: str = ""
    name: str = ""

    def example(self, prediction, reference) -> float:
        raise NotImplementedError

    def corpus(self, predictions: Sequence, references: Sequence) -> float:
        check_pairs(predictions, references)
        return mean(self.example(p, r) for p, r in zip(predictions, references))

    @property
    def mean_of_examples(self) -> bool:
        """corpus() is the mean of example(): a bootstrap may average per-example scores computed
        once instead of recomputing the corpus score on every resample."""
        return type(self).corpus is Metric.corpus

    # Corpus metrics that are a function of summed per-example counts (TP/FP/FN...) implement
    # counts() and from_counts(), so a bootstrap scores a resample from weighted sums of counts
    # computed once (exactly corpus() on the resample, see tests/unit/test_metrics.py).
    decomposable: bool = False

    def counts(self, predictions: Sequence, references: Sequence):
        """[N, K] per-example counts; the columns may depend on the whole set (e.g. its labels)."""
        raise NotImplementedError

    def from_counts(self, totals):
        """[B, K] summed counts -> [B] corpus scores."""
        raise NotImplementedError

    def examples(self, predictions: Sequence, references: Sequence) -> list[float]:
        """Per-example scores of a set (a subclass may score them in one batch)."""
        return [self.example(p, r) for p, r in zip(predictions, references)]

    def secondary(self, predictions: Sequence, references: Sequence) -> dict[str, float]:
        """Extra numbers a report should show beside the official one (none by default)."""
        return {}


def check_pairs(predictions: Sequence, references: Sequence) -> None:
    """A corpus score over nothing, or over misaligned lists, would be silently wrong: refuse."""
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions for {len(references)} references; they must align"
        )
    if not references:
        raise ValueError("cannot score an empty set of examples")


def mean(scores) -> float:
    values = list(scores)
    return sum(values) / len(values)


def as_text(value) -> str:
    """Generation output: None (a tier that returned nothing) is the empty string."""
    return "" if value is None else str(value)
