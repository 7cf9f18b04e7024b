"""The BLS's in-process router/T1 sessions: loaded from the model versions the repository version
pins (the manifest), and answering as the model.onnx the Triton model serves."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from bls_router.inprocess_onnx import (
    INPROCESS_ONNX_PARAMETER,
    MANIFEST,
    OnnxSessions,
    manifest_model_versions,
    pinned_onnx_files,
)


def _repository(tmp_path, tiny_build):
    """router v1 and v2 (different graphs: the router and t1_legal_risk's), t1_legal_risk v1;
    repository version 2 serves router 2 and keeps t1_legal_risk at 1."""
    onnx = tiny_build.root / "onnx"
    for model, version, source in (("router", 1, "t1_legal_risk"), ("router", 2, "router"), ("t1_legal_risk", 1, "t1_legal_risk")):
        folder = tmp_path / model / str(version)
        folder.mkdir(parents=True)
        shutil.copy(onnx / f"{source}.onnx", folder / "model.onnx")
    versions = [
        {"version": 1, "models": ["router", "t1_legal_risk"], "model_versions": {"router": 1, "t1_legal_risk": 1}},
        {"version": 2, "models": ["router", "t1_legal_risk"], "model_versions": {"router": 2, "t1_legal_risk": 1}},
    ]
    (tmp_path / MANIFEST).write_text(json.dumps({"versions": versions}))
    return tmp_path


def test_the_pinned_versions_are_the_ones_loaded(tmp_path, tiny_build):
    repo = _repository(tmp_path, tiny_build)
    assert manifest_model_versions(repo, 2) == {"router": 2, "t1_legal_risk": 1}
    files = pinned_onnx_files(repo, 2, ["router", "t1_legal_risk", "t1_cs_intent"])
    assert files == {"router": repo / "router/2/model.onnx", "t1_legal_risk": repo / "t1_legal_risk/1/model.onnx"}
    assert pinned_onnx_files(repo, 1, ["router"]) == {"router": repo / "router/1/model.onnx"}
    with pytest.raises(KeyError):
        manifest_model_versions(repo, 3)


def test_a_manifest_without_model_versions_serves_its_own_number(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"versions": [{"version": 4, "models": ["router"]}]}))
    assert manifest_model_versions(tmp_path, 4) == {"router": 4}


def test_sessions_answer_as_the_model_alone(tiny_build):
    path = tiny_build.root / "onnx" / "router.onnx"
    sessions = OnnxSessions({"router": path})
    assert "router" in sessions and "t1_legal_risk" not in sessions
    feed = {
        "input_ids": np.array([[0, 11, 42, 7, 2]], dtype=np.int64),
        "attention_mask": np.ones((1, 5), dtype=np.int64),
        "task_id": np.array([[1]], dtype=np.int64),
    }
    (expected,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feed)
    got = sessions.run("router", feed, ["logits"])
    assert list(got) == ["logits"]
    np.testing.assert_allclose(got["logits"], expected, rtol=1e-6)


def test_the_generated_bls_config_runs_sessions_on_the_cpu_build_only():
    from export.repository_builder import routenlp_model_spec
    from export.triton_config import render_config

    for target, value in (("cpu", "1"), ("ngc", "0")):
        assert routenlp_model_spec(target).parameters[INPROCESS_ONNX_PARAMETER] == value
        assert f'key: "{INPROCESS_ONNX_PARAMETER}"' in render_config(routenlp_model_spec(target))
