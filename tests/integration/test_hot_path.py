"""The routing hot path's two ways of reaching the router and T1, in a real tritonserver.

One server with the hot-path models only (router, the T1 heads and two entry models written from
the same `routenlp` version: `routenlp` with the router/T1 sessions in its own process, the default,
and `routenlp_bls_calls` with inprocess_onnx "0", BLS calls to the Triton models). Checked: the two
give the same answers, router probabilities and uncertainties; Triton's statistics show which path
ran; and a new repository version whose router differs moves the in-process sessions with it (the
pinned version, read from the repository manifest), as the BLS calls follow Triton's router.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import urllib.request

import pytest
import tritonclient.grpc as grpcclient

from bls_router.inprocess_onnx import INPROCESS_ONNX_PARAMETER
from clients.route_client import answer_from_outputs, entry_inputs
from export.repository import write_model_version
from export.repository_builder import routenlp_model_spec, write_repository
from routenlp.triton_server import TritonServer
from routenlp_core.contract import METADATA, OUTPUT
from routenlp_core.tasks import TASK_NAMES, get_task

pytestmark = pytest.mark.integration

BLS_CALLS = "routenlp_bls_calls"
STRUCTURED = [task for task in TASK_NAMES if get_task(task).structured]


def _write_bls_calls_variant(repository, version):
    """`routenlp` version N's files as the model routenlp_bls_calls, with BLS calls to router/T1."""
    spec = routenlp_model_spec("cpu")
    spec = dataclasses.replace(spec, name=BLS_CALLS, parameters={**spec.parameters, INPROCESS_ONNX_PARAMETER: "0"})
    folder = repository / "routenlp" / str(version)
    files = {entry.name: entry for entry in folder.iterdir() if entry.name not in ("config.pbtxt", "__pycache__")}
    shutil.rmtree(repository / BLS_CALLS / str(version), ignore_errors=True)
    write_model_version(repository, spec, files, version=version)


@pytest.fixture(scope="module")
def hot_path(tiny_build, tmp_path_factory):
    root = tmp_path_factory.mktemp("hot_path")
    repository = root / "model_repository"
    written = write_repository(tiny_build, repository, target="cpu")
    _write_bls_calls_variant(repository, written["version"])
    models = ["router", *(f"t1_{task}" for task in STRUCTURED), "routenlp", BLS_CALLS]
    env = {**os.environ, "ROUTENLP_ESCALATION_LOG": str(root / "escalation_log.sqlite")}
    server = TritonServer(repository, root / "tritonserver.log", load_models=models, env=env)
    server.start(timeout_s=300)
    try:
        yield server, repository, written
    finally:
        server.stop()


def _route(client, model, text, task, **kwargs):
    result = client.infer(model, entry_inputs(grpcclient, text, task, **kwargs), client_timeout=60)
    return answer_from_outputs(result.as_numpy(OUTPUT), result.as_numpy(METADATA), None)


def _requests(http_url, model):
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as response:
        stats = json.loads(response.read())["model_stats"]
    return sum(int(entry["inference_stats"]["success"]["count"]) for entry in stats)


def _same_route(a, b):
    assert a.output == b.output
    assert a.metadata["router"]["p"] == b.metadata["router"]["p"]
    assert a.metadata["u"] == b.metadata["u"] and a.metadata["tier"] == b.metadata["tier"] == "t1"


def test_in_process_sessions_answer_as_the_bls_calls(hot_path, tiny_build):
    server, _, _ = hot_path
    client = grpcclient.InferenceServerClient(server.grpc_url)
    compared = 0
    for task in STRUCTURED:
        router_before, t1_before = _requests(server.http_url, "router"), _requests(server.http_url, f"t1_{task}")
        records = tiny_build.pools.dev[task][:8]
        inline = [_route(client, "routenlp", r["text"], task, max_tier="t1") for r in records]
        # the in-process path never reaches Triton's router/T1 models
        assert (_requests(server.http_url, "router"), _requests(server.http_url, f"t1_{task}")) == (router_before, t1_before)
        calls = [_route(client, BLS_CALLS, r["text"], task, max_tier="t1") for r in records]
        assert _requests(server.http_url, "router") == router_before + len(records)
        assert _requests(server.http_url, f"t1_{task}") == t1_before + len(records)
        for a, b in zip(inline, calls):
            _same_route(a, b)
            compared += 1
        # a request that may escalate goes to the routing threads, with the same router answer
        pooled = _route(client, "routenlp", records[0]["text"], task, max_tier="t4")
        assert pooled.metadata["router"]["p"] == inline[0].metadata["router"]["p"]
        assert pooled.metadata["u"]["t1"] == inline[0].metadata["u"]["t1"]
    fixed = _route(client, "routenlp", tiny_build.pools.dev["cs_intent"][0]["text"], "cs_intent", policy="always-t1")
    assert fixed.metadata["tier"] == "t1" and fixed.metadata["router"]["tier"] is None
    client.close()
    print(f"\n[hot path] {compared} requests: identical OUTPUT, router p and u in-process and over BLS calls")


def test_a_new_router_version_moves_the_in_process_sessions_with_it(hot_path, tiny_build):
    """Repository version 2 pins router version 2 (here: another router's graph): the `routenlp`
    version routing it runs that router in-process, the same one Triton now serves to BLS calls."""
    server, repository, first = hot_path
    client = grpcclient.InferenceServerClient(server.grpc_url)
    text = tiny_build.pools.dev["legal_risk"][0]["text"]
    before = _route(client, "routenlp", text, "legal_risk", max_tier="t1")
    second = write_repository(tiny_build, repository, target="cpu", force={"router", "routenlp"})
    assert second["model_versions"]["router"] == second["version"] == first["version"] + 1
    assert second["model_versions"]["t1_legal_risk"] == first["version"]  # T1 stays pinned at the old one
    shutil.copy(tiny_build.root / "router_ablations" / "router_no_cost.onnx", repository / "router" / str(second["version"]) / "model.onnx")
    _write_bls_calls_variant(repository, second["version"])
    for model in ("router", "routenlp", BLS_CALLS):  # newest versions (Triton's default policy)
        urllib.request.urlopen(urllib.request.Request(f"http://{server.http_url}/v2/repository/models/{model}/load", data=b"", method="POST"), timeout=300)
    after = _route(client, "routenlp", text, "legal_risk", max_tier="t1")
    calls = _route(client, BLS_CALLS, text, "legal_risk", max_tier="t1")
    assert after.metadata["repository_version"] == second["version"] and after.metadata["bls_version"] == str(second["version"])
    assert after.metadata["router"]["p"] != before.metadata["router"]["p"]  # the new router answers
    _same_route(after, calls)
    client.close()
