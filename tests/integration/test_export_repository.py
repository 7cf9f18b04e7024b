"""`routenlp export` output served by a real tritonserver: router, T1 heads and vLLM tiers load
from the generated repository and answer like the exported models do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.onnx_export import ort_session
from export.repository_builder import MANIFEST, write_repository
from export.router_model import encode_router_inputs, load_router
from export.t1 import T1_TASKS
from routenlp.data import task_labels
from routenlp.triton_server import TritonServer
from routenlp_core.contract import ROUTER_ABLATION_MODELS

pytestmark = pytest.mark.integration


def test_repository_layout_and_generated_configs(tiny_build, tiny_repository, tmp_path):
    manifest = json.loads((tiny_repository / MANIFEST).read_text())
    names = ["router", *ROUTER_ABLATION_MODELS, *(f"t1_{t}" for t in T1_TASKS), "t2", "t3", "routenlp"]
    assert manifest["versions"][-1]["models"] == sorted(names)
    for name in names:
        config = text_format.Parse((tiny_repository / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert config.name == name and config.backend == "python"
        assert (tiny_repository / name / "1" / "model.py").exists()
    assert (tiny_repository / "t2" / "1" / "hf" / "config.json").exists()
    # Same artefacts again: no new version. NGC target: stock backends, no python adapters.
    assert write_repository(tiny_build, tiny_repository)["fresh"] is False
    ngc = tmp_path / "ngc"
    write_repository(tiny_build, ngc, target="ngc")
    router = text_format.Parse((ngc / "router" / "config.pbtxt").read_text(), mc.ModelConfig())
    t2 = text_format.Parse((ngc / "t2" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert router.platform == "onnxruntime_onnx" and not (ngc / "router" / "1" / "model.py").exists()
    assert t2.backend == "vllm" and t2.model_transaction_policy.decoupled
    assert json.loads((ngc / "t2" / "1" / "model.json").read_text())["model"] == "/models/t2/1/hf"


@pytest.fixture(scope="module")
def served(tiny_repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("served") / "server.log"
    with TritonServer(tiny_repository, log) as server:
        yield server


def test_router_in_triton_matches_onnx_runtime(served, tiny_build):
    router, meta = load_router(tiny_build.root / "router")
    records = tiny_build.pools.flat("dev")[:5]
    inputs = encode_router_inputs(router, tiny_build.tokenizer(), records, meta["max_len"])
    client = grpcclient.InferenceServerClient(served.grpc_url)
    tensors = []
    for name, value in inputs.items():
        tensor = grpcclient.InferInput(name, list(value.shape), "INT64")
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    logits = client.infer("router", tensors).as_numpy("logits")
    expected = ort_session(tiny_build.root / "onnx" / "router.onnx").run(["logits"], inputs)[0]
    assert logits.shape == (5, 4)
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_t1_and_vllm_tiers_answer_over_grpc(served, tiny_build):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    ids = np.array([tiny_build.tokenizer()("my card has not arrived yet")["input_ids"]], dtype=np.int64)
    tensors = []
    for name, value in (("input_ids", ids), ("attention_mask", np.ones_like(ids))):
        tensor = grpcclient.InferInput(name, list(value.shape), "INT64")
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    logits = client.infer("t1_cs_intent", tensors).as_numpy("logits")
    assert logits.shape == (1, len(task_labels("cs_intent")))
    for tier in ("t2", "t3"):
        text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"task: cs_intent\ntext: my card has not arrived\nanswer:"]], dtype=object))
        params = grpcclient.InferInput("sampling_parameters", [1, 1], "BYTES")
        params.set_data_from_numpy(np.array([[json.dumps({"max_tokens": 8, "temperature": 0}).encode()]], dtype=object))
        result = client.infer(tier, [text, params])
        logprobs = result.as_numpy("token_logprobs")
        assert result.as_numpy("text_output").size == 1
        assert logprobs.size >= 1 and np.all(logprobs <= 0)
