"""Label metrics for the classification tasks (cs_intent, legal_risk, legal_clause)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from .base import Metric, check_pairs

# legal_clause's negative class: a sentence that belongs to no clause category.
NO_CLAUSE = "none"


def as_label(value) -> str:
    """A predicted or gold label; surrounding whitespace from a generator is not a different label.

    None (no answer) becomes "", which matches no gold label and so counts as wrong.
    """
    return "" if value is None else str(value).strip()


def as_labels(values: Sequence) -> list[str]:
    return [as_label(v) for v in values]


def exact_match(prediction, reference) -> float:
    return 1.0 if as_label(prediction) == as_label(reference) else 0.0


def macro_f1(predictions: Sequence, references: Sequence) -> float:
    """Unweighted mean of per-label F1 over the union of gold and predicted labels.

    The union (not gold labels only) means a label the model invents scores F1 = 0 and pulls the
    mean down; labels with no support and no predictions score 0 (zero_division=0), never NaN.
    """
    check_pairs(predictions, references)
    gold, predicted = as_labels(references), as_labels(predictions)
    labels = sorted(set(gold) | set(predicted))
    return float(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0))


def f1_from_counts(tp, fp, fn, empty: float = 0.0):
    """F1 = 2TP / (2TP + FP + FN) elementwise; `empty` where nothing was predicted nor expected."""
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), empty)


class MacroF1(Metric):
    key = "macro_f1"
    name = "macro-F1"
    decomposable = True

    def counts(self, predictions: Sequence, references: Sequence):
        # [N, 3L]: TP, FP, FN per label of the set's union of gold and predicted labels.
        gold, predicted = np.array(as_labels(references)), np.array(as_labels(predictions))
        labels = np.array(sorted(set(gold) | set(predicted)))
        is_gold, is_pred = gold[:, None] == labels, predicted[:, None] == labels
        return np.concatenate([is_gold & is_pred, is_pred & ~is_gold, is_gold & ~is_pred], axis=1).astype(float)

    def from_counts(self, totals):
        tp, fp, fn = np.split(np.asarray(totals, dtype=float), 3, axis=-1)
        present = (tp + fp + fn) > 0  # a resample's union of gold and predicted labels
        return (f1_from_counts(tp, fp, fn) * present).sum(axis=-1) / present.sum(axis=-1)

    def example(self, prediction, reference) -> float:
        return exact_match(prediction, reference)

    def corpus(self, predictions: Sequence, references: Sequence) -> float:
        return macro_f1(predictions, references)


class Accuracy(Metric):
    key = "accuracy"
    name = "accuracy"
    decomposable = True

    def counts(self, predictions: Sequence, references: Sequence):
        return np.array([[exact_match(p, r), 1.0] for p, r in zip(predictions, references)]).reshape(-1, 2)

    def from_counts(self, totals):
        totals = np.asarray(totals, dtype=float)
        return totals[..., 0] / totals[..., 1]

    def example(self, prediction, reference) -> float:
        return exact_match(prediction, reference)

    def corpus(self, predictions: Sequence, references: Sequence) -> float:
        check_pairs(predictions, references)
        return float(accuracy_score(as_labels(references), as_labels(predictions)))

    def secondary(self, predictions: Sequence, references: Sequence) -> dict[str, float]:
        # Risk levels are imbalanced (most clauses are fair), so accuracy alone flatters a model
        # that always answers the majority level.
        return {"macro-F1": macro_f1(predictions, references)}


class ClauseF1(Metric):
    """Sentence-level clause extraction F1: micro-F1 over the clause categories, "none" excluded.

    A sentence labelled with the wrong category is both a false positive (for the predicted one)
    and a false negative (for the gold one). Correctly answering "none" earns nothing, so a model
    cannot score by extracting nothing. If no clause category appears in the gold labels nor the
    predictions, there was nothing to extract and nothing was extracted: the score is 1.0.
    """

    key = "clause_f1"
    name = "clause F1 (sentence-level, micro over categories)"
    decomposable = True

    def counts(self, predictions: Sequence, references: Sequence):
        # [N, 3]: TP, FP, FN over the clause categories (anything but "none", a blank answer included).
        gold, predicted = np.array(as_labels(references)), np.array(as_labels(predictions))
        tp = (gold == predicted) & (gold != NO_CLAUSE)
        return np.stack([tp, (predicted != NO_CLAUSE) & ~tp, (gold != NO_CLAUSE) & ~tp], axis=1).astype(float).reshape(-1, 3)

    def from_counts(self, totals):
        tp, fp, fn = np.moveaxis(np.asarray(totals, dtype=float), -1, 0)
        return f1_from_counts(tp, fp, fn, empty=1.0)

    def example(self, prediction, reference) -> float:
        # Per sentence the same rules reduce to exact match ("none" vs "none" is the 1.0 edge case).
        return exact_match(prediction, reference)

    def corpus(self, predictions: Sequence, references: Sequence) -> float:
        check_pairs(predictions, references)
        gold, predicted = as_labels(references), as_labels(predictions)
        categories = sorted((set(gold) | set(predicted)) - {NO_CLAUSE})
        if not categories:
            return 1.0
        return float(f1_score(gold, predicted, labels=categories, average="micro", zero_division=0))
