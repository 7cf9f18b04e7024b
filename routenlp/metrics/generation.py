"""ROUGE-L for fin_summary, via Google's rouge-score package."""

from __future__ import annotations

from functools import cached_property

from rouge_score.rouge_scorer import RougeScorer

from .base import Metric, as_text


class RougeL(Metric):
    """Per-example ROUGE-L F-measure (stemmed), averaged over the set.

    rouge-score's tokenizer lowercases and keeps only [a-z0-9] tokens, which suits English
    summaries; an empty prediction scores 0.
    """

    key = "rouge_l"
    name = "ROUGE-L"

    @cached_property
    def _scorer(self) -> RougeScorer:
        return RougeScorer(["rougeL"], use_stemmer=True)

    def example(self, prediction, reference) -> float:
        summary = as_text(prediction)
        if not summary.strip():
            return 0.0
        # rouge-score's argument order is (target, prediction).
        return float(self._scorer.score(as_text(reference), summary)["rougeL"].fmeasure)
