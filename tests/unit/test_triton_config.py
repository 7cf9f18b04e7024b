from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.repository import latest_version, write_model_version
from export.triton_config import ModelSpec, TensorSpec, render_config

SPEC = ModelSpec(
    name="router",
    inputs=[TensorSpec("TEXT", "BYTES"), TensorSpec("MAX_TIER", "INT32", optional=True)],
    outputs=[TensorSpec("LOGITS", "FP32", dims=(4,))],
    max_batch_size=16,
    dynamic_batching_delay_us=500,
    parameters={"portfolio": "default"},
)


def test_render_config_parses_back_as_triton_model_config():
    parsed = text_format.Parse(render_config(SPEC), mc.ModelConfig())
    assert parsed.name == "router" and parsed.backend == "python" and parsed.max_batch_size == 16
    assert [(t.name, t.data_type, list(t.dims), t.optional) for t in parsed.input] == [
        ("TEXT", mc.TYPE_STRING, [1], False),
        ("MAX_TIER", mc.TYPE_INT32, [1], True),
    ]
    assert parsed.output[0].dims == [4]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 500
    assert parsed.parameters["portfolio"].string_value == "default"
    assert parsed.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_platform_target_and_decoupled():
    spec = ModelSpec("t1", [TensorSpec("X", "INT64", (-1,))], [TensorSpec("Y", "FP32", (-1,))], backend=None, platform="onnxruntime_onnx", decoupled=True)
    parsed = text_format.Parse(render_config(spec), mc.ModelConfig())
    assert parsed.platform == "onnxruntime_onnx" and parsed.backend == ""
    assert parsed.model_transaction_policy.decoupled


def test_unknown_dtype_is_rejected():
    with pytest.raises(ValueError, match="unknown Triton dtype 'FLOAT'"):
        render_config(ModelSpec("m", [TensorSpec("X", "FLOAT")], []))


def test_versions_are_written_atomically_and_immutable(tmp_path: Path):
    source = tmp_path / "model.py"
    source.write_text("# model\n")
    first = write_model_version(tmp_path / "repo", SPEC, {"model.py": source, "meta/info.json": "{}"})
    second = write_model_version(tmp_path / "repo", SPEC, {"model.py": b"# v2\n"})
    assert (first.name, second.name) == ("1", "2")
    assert (first / "meta" / "info.json").read_text() == "{}"
    assert (second / "model.py").read_bytes() == b"# v2\n"
    assert latest_version(tmp_path / "repo" / "router") == 2
    assert (tmp_path / "repo" / "router" / "config.pbtxt").read_text().startswith("# Generated")
    assert not [p for p in (tmp_path / "repo" / "router").iterdir() if p.name.startswith(".")]  # no staging left
    with pytest.raises(FileExistsError):
        write_model_version(tmp_path / "repo", SPEC, {"model.py": source}, version=2)


def test_failed_write_leaves_no_partial_version(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        write_model_version(tmp_path / "repo", SPEC, {"model.py": tmp_path / "missing.py"})
    model_dir = tmp_path / "repo" / "router"
    assert latest_version(model_dir) == 0
    assert list(model_dir.iterdir()) == []
