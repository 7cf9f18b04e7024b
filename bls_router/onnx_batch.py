"""Several requests to an ONNX model (router, T1) as one ONNX Runtime run, and back.

The Triton configs let the dynamic batcher gather requests of different lengths (allow_ragged_batch);
the python-backend runner (triton_models/onnx_runner.py) stacks them here. Plain numpy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np


def stack_requests(feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One feed from several requests' feeds ([1, T_i, ...] each): rows stacked, right-padded with
    0 along axis 1 where lengths differ (attention_mask 0 hides the padding, as the build's
    batched evaluation pads)."""
    batched = {}
    for name in feeds[0]:
        arrays = [feed[name] for feed in feeds]
        width = max(a.shape[1] for a in arrays) if arrays[0].ndim > 1 else None
        if width is not None and any(a.shape[1] != width for a in arrays):
            arrays = [np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) for a in arrays]
        batched[name] = np.concatenate(arrays, axis=0)
    return batched


def split_outputs(
    outputs: Sequence[np.ndarray], feeds: Sequence[Mapping[str, np.ndarray]]
) -> Iterator[list[np.ndarray]]:
    """Each request's rows of the batched outputs; a per-token output ([B, T, ...]) cut back to
    the request's own length (its attention_mask's)."""
    start = 0
    for feed in feeds:
        rows = len(next(iter(feed.values())))
        length = feed["attention_mask"].shape[1] if "attention_mask" in feed else None
        yield [out[start : start + rows, :length] if out.ndim > 2 else out[start : start + rows] for out in outputs]
        start += rows
