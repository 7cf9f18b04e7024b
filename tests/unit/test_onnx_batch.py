"""Requests of different lengths run as one padded ONNX Runtime batch give each request the
answer it gets alone (router, a T1 classifier and the per-token NER head of the tiny build)."""

from __future__ import annotations

import numpy as np
import pytest

from bls_router.onnx_batch import split_outputs, stack_requests


def _feeds(lengths, *, task_id=False, seed=0):
    rng = np.random.default_rng(seed)
    feeds = []
    for n in lengths:
        feed = {"input_ids": rng.integers(3, 200, size=(1, n)).astype(np.int64), "attention_mask": np.ones((1, n), dtype=np.int64)}
        feed["input_ids"][0, 0] = 0  # <s>
        if task_id:
            feed["task_id"] = np.array([[n % 4]], dtype=np.int64)
        feeds.append(feed)
    return feeds


def test_stack_pads_with_masked_zeros_and_split_cuts_back():
    feeds = _feeds([3, 5, 1], task_id=True)
    batched = stack_requests(feeds)
    assert batched["input_ids"].shape == (3, 5) and batched["task_id"].shape == (3, 1)
    assert batched["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5, [1, 0, 0, 0, 0]]
    per_token = np.arange(3 * 5 * 2, dtype=np.float32).reshape(3, 5, 2)
    per_text = np.arange(6, dtype=np.float32).reshape(3, 2)
    parts = list(split_outputs([per_token, per_text], feeds))
    assert [p[0].shape for p in parts] == [(1, 3, 2), (1, 5, 2), (1, 1, 2)]
    assert [p[1].tolist() for p in parts] == [[[0, 1]], [[2, 3]], [[4, 5]]]


@pytest.mark.parametrize("model, task_id", [("router", True), ("t1_legal_risk", False), ("t1_fin_ner", False)])
def test_a_padded_batch_answers_each_request_as_alone(tiny_build, model, task_id):
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_build.root / "onnx" / f"{model}.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = _feeds([7, 30, 2, 18], task_id=task_id)
    alone = [session.run(names, feed) for feed in feeds]
    together = list(split_outputs(session.run(names, stack_requests(feeds)), feeds))
    for single, batched in zip(alone, together):
        for a, b in zip(single, batched):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-4)
            assert (a.argmax(-1) == b.argmax(-1)).all()
