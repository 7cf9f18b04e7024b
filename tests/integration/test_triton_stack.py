"""The real stack on this machine: tritonserver + python backend, tritonclient gRPC/HTTP, perf_analyzer."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clients.perf import perf_analyzer_version, run_perf_analyzer, write_input_data
from routenlp.triton_server import ServerStartError, TritonServer

pytestmark = pytest.mark.integration

CLIENTS = {"grpc": grpcclient, "http": httpclient}


def _client(server, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    return CLIENTS[protocol].InferenceServerClient(url)


def _text_input(protocol, texts: list[bytes]):
    tensor = CLIENTS[protocol].InferInput("TEXT", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t] for t in texts], dtype=object))
    return tensor


def test_server_reports_version_and_ready(selftest_server):
    assert selftest_server.metadata()["version"] == "2.51.0"
    assert selftest_server.is_ready()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_infer_batch_roundtrip(selftest_server, protocol):
    client = _client(selftest_server, protocol)
    texts = ["héllo wörld".encode(), b"second request"]
    result = client.infer("echo", [_text_input(protocol, texts)])
    assert list(result.as_numpy("OUTPUT").ravel()) == texts
    assert list(result.as_numpy("LENGTH").ravel()) == [11, 14]
    client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_invalid_utf8_is_a_clear_error_and_server_keeps_serving(selftest_server, protocol):
    client = _client(selftest_server, protocol)
    with pytest.raises(InferenceServerException, match="not valid UTF-8"):
        client.infer("echo", [_text_input(protocol, [b"\xff\xfe bad"])])
    assert client.infer("echo", [_text_input(protocol, [b"ok"])]).as_numpy("OUTPUT").ravel()[0] == b"ok"
    client.close()


def test_wrong_input_name_is_rejected(selftest_server):
    client = _client(selftest_server, "grpc")
    tensor = grpcclient.InferInput("NOT_TEXT", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"x"]], dtype=object))
    with pytest.raises(InferenceServerException, match="NOT_TEXT|TEXT"):
        client.infer("echo", [tensor])
    client.close()


def test_perf_analyzer_measures_throughput_and_latency(selftest_server, tmp_path):
    assert perf_analyzer_version().startswith("Perf Analyzer Version 2.51")
    data = write_input_data(tmp_path / "input.json", [{"TEXT": ["a customer asks about a card"]}, {"TEXT": ["quarterly revenue rose"]}])
    for protocol, url in (("grpc", selftest_server.grpc_url), ("http", selftest_server.http_url)):
        points = run_perf_analyzer("echo", url, protocol=protocol, input_data=data, concurrency=(1, 2), measurement_ms=1000)
        assert [p.concurrency for p in points] == [1, 2]
        for point in points:
            assert point.throughput > 50, point  # an echo model answers hundreds per second here
            assert 0 < point.p50_ms <= point.p99_ms < 1000, point


def test_model_failing_initialize_fails_server_start_loudly(write_broken_model, tmp_path):
    repo = write_broken_model("tier weights missing: /nowhere")
    server = TritonServer(repo, tmp_path / "broken.log", load_models=["echo"])
    with pytest.raises(ServerStartError, match="tier weights missing"):
        server.start(timeout_s=120)
    assert server.process is None  # stopped and reaped


def test_a_port_taken_before_triton_binds_it_is_picked_afresh(tmp_path):
    """Issue 21's flake: Triton lost its metrics port to another process between the pick and its
    bind, and exited. Here the port is taken on purpose; the start is retried on fresh ports."""
    import socket
    import urllib.request

    from routenlp.selftest.repository import build_selftest_repository

    repo = build_selftest_repository(tmp_path / "repo")
    server = TritonServer(repo, tmp_path / "server.log", load_models=["echo"])
    taken = server.metrics_port
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", taken))
        holder.listen()
        with server.start(timeout_s=120):
            assert server.metrics_port != taken
            assert len(server.port_retries) == 1 and f":{taken}' already in use" in server.port_retries[0]
            with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
                assert b"nv_inference_request_success" in response.read()
            assert "starting it again on fresh ports" in server.log_path.read_text()
        # a restart keeps its ports (clients hold the URLs): a taken one is an error that says so
        holder2 = socket.socket()
        holder2.bind(("0.0.0.0", server.grpc_port))
        holder2.listen()
        try:
            held = rf"could not bind port\(s\) .*{server.grpc_port}.*another process holds one"
            with pytest.raises(ServerStartError, match=held):
                server.start(timeout_s=120, keep_ports=True)
        finally:
            holder2.close()
    assert server.process is None
