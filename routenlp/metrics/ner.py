"""Entity-level F1 for fin_ner (IO tags such as "I-ORG" / "O"), scored with seqeval."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from seqeval.metrics import f1_score
from seqeval.metrics.sequence_labeling import get_entities

from .base import Metric, check_pairs

OUTSIDE = "O"


def as_tags(value) -> list[str]:
    """A tag sequence; None means no output, a string is whitespace-separated tags."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(tag) for tag in value]


def align_to_reference(prediction, reference_length: int) -> list[str]:
    """Pad with "O" / truncate so a tier that dropped or added tokens is scored, not a crash.

    Missing tags count as "no entity there", extra tags are beyond the sentence and are ignored.
    """
    tags = as_tags(prediction)[:reference_length]
    return tags + [OUTSIDE] * (reference_length - len(tags))


def has_entities(tag_sequences: list[list[str]]) -> bool:
    return any(get_entities(tags) for tags in tag_sequences)


def entity_f1(predictions: Sequence, references: Sequence) -> float:
    """Micro entity F1 (seqeval default mode: an entity is a maximal run of one type's I- tags).

    No entities in the gold tags nor the predictions: 1.0 (nothing to find, nothing invented);
    seqeval itself would return 0 there. Gold entities with an empty / all-"O" prediction: 0.0.
    """
    check_pairs(predictions, references)
    gold = [as_tags(ref) for ref in references]
    predicted = [align_to_reference(pred, len(ref)) for pred, ref in zip(predictions, gold)]
    if not has_entities(gold) and not has_entities(predicted):
        return 1.0
    return float(f1_score(gold, predicted, zero_division=0))


class EntityF1(Metric):
    key = "entity_f1"
    name = "entity F1 (seqeval)"
    decomposable = True

    def counts(self, predictions: Sequence, references: Sequence):
        # [N, 3]: matched entities, gold entities, predicted entities per sentence (seqeval's micro
        # scores concatenated sentences, so entities never cross a sentence and the sums agree).
        rows = []
        for prediction, reference in zip(predictions, references):
            gold = set(get_entities(as_tags(reference)))
            predicted = set(get_entities(align_to_reference(prediction, len(as_tags(reference)))))
            rows.append([len(gold & predicted), len(gold), len(predicted)])
        return np.array(rows, dtype=float).reshape(-1, 3)

    def from_counts(self, totals):
        from .classification import f1_from_counts

        matched, gold, predicted = np.moveaxis(np.asarray(totals, dtype=float), -1, 0)
        return f1_from_counts(matched, predicted - matched, gold - matched, empty=1.0)

    def example(self, prediction, reference) -> float:
        return entity_f1([prediction], [reference])

    def corpus(self, predictions: Sequence, references: Sequence) -> float:
        return entity_f1(predictions, references)
