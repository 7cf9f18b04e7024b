"""The cascade's uncertainty scores (paper eq. 3), shared by labelling, calibration and serving."""

from __future__ import annotations

import math
from collections.abc import Sequence


def generation_uncertainty(token_logprobs: Sequence[float]) -> float:
    """u = mean(1 - p(token)) over the generated tokens; an empty answer is maximally uncertain."""
    if not token_logprobs:
        return 1.0
    return sum(1.0 - math.exp(lp) for lp in token_logprobs) / len(token_logprobs)


def classifier_uncertainty(max_probability: float) -> float:
    """u = 1 - max softmax probability."""
    return 1.0 - float(max_probability)
