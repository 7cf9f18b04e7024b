"""The routing BLS `routenlp` in a real tritonserver, end to end over gRPC.

One module-wide stack: the tiny-profile build written as a model repository (router, T1 heads,
T2/T3 vLLM tiers and the BLS), vLLM's OpenAI server on the T4 checkpoint as the T4 endpoint, and
tritonserver with ROUTENLP_T4_BASE_URL pointing the BLS at it. Both servers start in parallel.

In file order: one dev request per task (OUTPUT/METADATA checked, T1 answers compared with the
build's), bad requests (clear errors, server keeps serving), custom metrics on /metrics, a new
`routenlp` version with always-escalate thresholds hot-loaded through the repository API
(escalation up to T4; MAX_TIER t3 never reaches it), then T4 stopped: answers still come, with
the fallback in METADATA and in the metrics.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bls_router.pending_metrics import PUBLISH_INTERVAL_S
from export.calibrate import write_calibrated_version
from export.repository_builder import write_repository
from routenlp.deployment import ADMIN_HEADER, Deployment, admin_key
from routenlp.t4_endpoint import T4Endpoint
from routenlp.triton_server import TritonServer
from routenlp_core.serving_config import load_serving_config
from routenlp_core.tasks import TASK_NAMES, get_task

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 480  # T2 + T3 engines inside Triton and the T4 server, sharing 2 cores
MODEL = "routenlp"


@dataclass
class Stack:
    repository: Path
    version: int
    server: TritonServer
    t4: T4Endpoint
    build: object
    deployment: Deployment


@pytest.fixture(scope="module")
def stack(tiny_build, tmp_path_factory):
    """What `routenlp serve` runs (routenlp.deployment.Deployment): T4 endpoint + tritonserver,
    escalation log and logs in a temporary state folder, repository API behind the admin key."""
    root = tmp_path_factory.mktemp("bls_routing")
    repository = root / "model_repository"
    written = write_repository(tiny_build, repository, target="cpu")
    assert MODEL in written["models"]
    deployment = Deployment(repository, state_dir=root / "state")
    try:
        deployment.start(timeout_s=START_TIMEOUT_S)
        print(f"\n[timing] tritonserver (router, 4 T1, T2, T3, BLS) + T4 endpoint ready in {deployment.startup_s:.0f} s "
              f"(T4 alone {deployment.t4.startup_s or 0:.0f} s); logs {root}")  # fmt: skip
        _warm_up(deployment.server)
        yield Stack(repository, written["version"], deployment.server, deployment.t4, tiny_build, deployment)
    finally:
        deployment.stop()


def _warm_up(server: TritonServer) -> None:
    """The first generation of a vLLM engine takes seconds; pay it here, not in the timed requests."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    started = time.perf_counter()
    for tier in ("t2", "t3"):
        text = _tensor("text_input", "task: cs_intent\ntext: warm up\nanswer:")
        client.infer(tier, [text, _tensor("sampling_parameters", '{"max_tokens": 4}')], client_timeout=120)
    client.close()
    print(f"[timing] T2 + T3 first generations (warm-up) {time.perf_counter() - started:.1f} s")


def _tensor(name: str, value, dtype: str = "BYTES", shape=(1, 1)) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(shape), dtype)
    if dtype == "BYTES":
        values = value if isinstance(value, list) else [value]
        array = np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=np.object_).reshape(shape)
    else:
        array = np.asarray(value, dtype=np.int32).reshape(shape)
    tensor.set_data_from_numpy(array)
    return tensor


def _inputs(text, task, max_tier=None, request_id=None, policy=None) -> list:
    tensors = [_tensor("TEXT", text), _tensor("TASK", task)]
    for name, value in (("MAX_TIER", max_tier), ("REQUEST_ID", request_id), ("POLICY", policy)):
        if value is not None:
            tensors.append(_tensor(name, value))
    return tensors


def route(client, text, task, max_tier=None, request_id=None, policy=None) -> tuple[str, dict, float]:
    started = time.perf_counter()
    result = client.infer(MODEL, _inputs(text, task, max_tier, request_id, policy), client_timeout=120)
    seconds = time.perf_counter() - started
    output = result.as_numpy("OUTPUT").reshape(-1)[0].decode()
    return output, json.loads(result.as_numpy("METADATA").reshape(-1)[0]), seconds


def _check_answer(task: str, text: str, output: str, meta: dict) -> None:
    kind = get_task(task).kind
    if kind == "classification":
        assert isinstance(json.loads(output)["label"], str)
    elif kind == "ner":
        answer = json.loads(output)
        assert len(answer["tags"]) == len(text.split())
        for entity in answer["entities"]:
            assert answer["tags"][entity["start"]] == f"I-{entity['type']}"
    else:
        assert isinstance(output, str)
    path = meta["path"]
    assert meta["task"] == task and path[0] == meta["start_tier"]
    assert meta["tier"] in path and set(meta["u"]) <= set(path)
    assert set(meta["latency_ms"]) == {"router", *path}
    assert meta["cost_usd"] > 0 and meta["total_ms"] > 0
    if not get_task(task).structured:
        assert "t1" not in path


def _stages_ms(meta: dict) -> float:
    return sum(v for k, v in meta["latency_ms"].items() if k != "router")


def test_one_dev_request_per_task(stack):
    config = load_serving_config(stack.repository / MODEL / str(stack.version))
    assert config.calibration.get("status") == "calibrated", config.calibration
    dev_answers = stack.build.load_answers("dev")
    client = grpcclient.InferenceServerClient(stack.server.grpc_url)
    rows = []
    for task in TASK_NAMES:
        records = stack.build.pools.dev[task][:2]
        # the first request of each task warms its tiers up; the second one is timed
        for record in records:
            request_id = f"dev-{record['id']}"
            output, meta, seconds = route(client, record["text"], task, request_id=request_id)
            _check_answer(task, record["text"], output, meta)
            assert meta["request_id"] == request_id
            assert meta["repository_version"] == stack.version and meta["bls_version"] == "1"
            assert meta["fallback"] is None and meta["errors"] == {}, meta
            # one pass probability per tier and the utility's lambda; structured tasks: T1 answers first
            # (its confidence is a feature) and the utility's pick answers, or its one escalation target
            rule = config.utility()
            assert all(0.0 <= p <= 1.0 for p in meta["router"]["p"].values())
            assert meta["router"]["lambda"] == (None if rule is None or math.isinf(rule.lam) else rule.lam)
            if task in config.cascade_first:
                assert meta["start_tier"] == "t1" and meta["path"][0] == "t1"
                assert meta["path"][1:2] in ([], [meta["router"]["tier"]]) or meta["router"]["tier"] == "t1"
            else:
                assert meta["router"]["tier"] == meta["start_tier"]
            assert len(meta["path"]) <= 3  # T1 first, the pick, at most one escalation
            if meta["path"][0] == "t1":  # the served T1 answer is the one the build measured
                built = dev_answers[record["id"]]["t1"]
                assert meta["u"]["t1"] == pytest.approx(built["u"], abs=1e-3)
                if meta["path"] == ["t1"]:
                    served = json.loads(output)
                    assert served.get("label", served.get("tags")) == built["prediction"]
        rows.append((task, meta, seconds))
    client.close()
    print("\n[timing] one dev request per task (second request, warm):")
    for task, meta, seconds in rows:
        print(
            f"  {task:13s} path {'>'.join(meta['path']):12s} e2e {seconds * 1000:7.1f} ms  BLS total {meta['total_ms']:7.1f} ms  "
            f"router {meta['latency_ms']['router']:5.1f} ms  tiers {_stages_ms(meta):7.1f} ms  "
            f"overhead {meta['overhead_ms']:5.1f} ms (router incl.)  cost ${meta['cost_usd']:.6f}"
        )


def test_routing_overhead_is_small(stack):
    """Router call + cascade bookkeeping per request, over repeated structured requests."""
    client = grpcclient.InferenceServerClient(stack.server.grpc_url)
    records = [r for task in ("cs_intent", "legal_risk", "legal_clause", "fin_ner") for r in stack.build.pools.dev[task][:5]]
    metas, e2e = [], []
    for record in records:
        _, meta, seconds = route(client, record["text"], record["task"], max_tier="t1")
        metas.append(meta)
        e2e.append(seconds * 1000)
    client.close()
    router = statistics.median(m["latency_ms"]["router"] for m in metas)
    overhead = statistics.median(m["overhead_ms"] - m["latency_ms"]["router"] for m in metas)
    print(
        f"\n[timing] MAX_TIER t1 x {len(metas)}: median router call {router:.1f} ms, cascade + encoding/formatting "
        f"{overhead:.2f} ms, T1 stage {statistics.median(_stages_ms(m) for m in metas):.1f} ms, "
        f"client end-to-end {statistics.median(e2e):.1f} ms"
    )
    assert all(m["path"] == ["t1"] and m["max_tier"] == "t1" for m in metas)
    assert router < 500 and overhead < 100


@pytest.mark.parametrize(
    "make_inputs, match",
    [
        (lambda: _inputs("", "cs_intent"), "TEXT is empty"),
        (lambda: _inputs("hello", "cs_intnt"), "unknown TASK 'cs_intnt'; valid tasks: cs_intent"),
        (lambda: _inputs(b"caf\xe9 au lait", "cs_intent"), "TEXT is not valid UTF-8"),
        (lambda: _inputs("x" * (32 * 1024 + 1), "cs_intent"), "TEXT is 32769 bytes; the limit is 32768 bytes"),
        (lambda: _inputs("hello", "cs_intent", max_tier="t9"), "MAX_TIER must be one of t1, t2, t3, t4"),
        (lambda: _inputs("hello", "fin_summary", max_tier="t1"), "generation tasks are served by t2-t4"),
        (lambda: [_tensor("TEXT", 7, "INT32"), _tensor("TASK", "cs_intent")], "TEXT.*INT32|INT32.*TEXT"),
        (lambda: [_tensor("TEXT", ["a", "b"], shape=(2, 1)), _tensor("TASK", ["cs_intent"] * 2, shape=(2, 1))], "one text per request"),
        (lambda: [_tensor("TEXT", "hello")], "TASK"),
        (lambda: _inputs("hello", "cs_intent", policy="cheapest"), "POLICY must be one of routenlp, routenlp-no-cascade"),
        (lambda: _inputs("hello", "cs_response", policy="always-t1"), "t1 does not serve cs_response"),
    ],
    ids=["empty", "unknown-task", "bad-utf8", "too-big", "bad-max-tier", "t1-for-generation", "int32-text", "client-batch", "no-task", "bad-policy", "always-t1-generation"],
)
def test_bad_request_gets_a_clear_error_and_the_server_keeps_serving(stack, make_inputs, match):
    client = grpcclient.InferenceServerClient(stack.server.grpc_url)
    with pytest.raises(InferenceServerException, match=match) as caught:
        client.infer(MODEL, make_inputs(), client_timeout=60)
    assert "INVALID_ARG" in str(caught.value.status()), caught.value
    output, meta, _ = route(client, "my card has not arrived yet", "cs_intent")
    assert json.loads(output)["label"] and meta["errors"] == {}
    client.close()


def _metrics(stack) -> dict[str, float]:
    """name{labels} -> value for the routenlp_* series of /metrics, once the BLS's publisher
    thread has published the requests answered so far (bls_router/pending_metrics.py)."""
    time.sleep(2 * PUBLISH_INTERVAL_S)
    with urllib.request.urlopen(stack.server.metrics_url, timeout=10) as response:
        body = response.read().decode()
    values = {}
    for line in body.splitlines():
        if line.startswith("routenlp_"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def _total(metrics: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in metrics.items() if k.split("{")[0] == name and all(w in k for w in wanted))


def test_custom_metrics_on_the_metrics_endpoint(stack):
    metrics = _metrics(stack)
    assert _total(metrics, "routenlp_requests_total") >= len(TASK_NAMES) * 2
    assert _total(metrics, "routenlp_cost_dollars_total") > 0
    assert _total(metrics, "routenlp_request_failures_total", code="invalid_arg") >= 6  # Triton itself refuses INT32 / no TASK
    assert _total(metrics, "routenlp_latency_ms_count") >= len(TASK_NAMES)
    assert any(k.startswith("routenlp_escalation_rate{") for k in metrics)
    assert all(v in (0.0, 1.0) for k, v in metrics.items() if k.startswith("routenlp_escalation_alert{"))
    for family in ("routenlp_escalations_total", "routenlp_fallbacks_total", "routenlp_escalation_alert", "routenlp_log_failures_total"):
        assert any(k.startswith(family + "{") for k in metrics), f"{family} missing"
    served = {
        f"{task}/{tier}": total
        for task in TASK_NAMES
        for tier in ("t1", "t2", "t3", "t4")
        if (total := _total(metrics, "routenlp_requests_total", task=task, tier=tier))
    }
    print(f"\n[metrics] answered by task/tier (summed over instances): {served}")


def test_every_routed_request_is_in_the_escalation_log_without_its_text(stack, capsys):
    from bls_router.escalation_log import EscalationLogReader
    from routenlp.cli import main

    with EscalationLogReader(stack.deployment.escalation_log) as reader:
        records = {r["request_id"]: r for r in reader.records()}
    for task in TASK_NAMES:  # the requests of test_one_dev_request_per_task
        for record in stack.build.pools.dev[task][:2]:
            logged = records[f"dev-{record['id']}"]
            assert logged["task"] == task and logged["path"] and logged["cost_usd"] >= 0 and logged["repository_version"] == stack.version
            assert "text" not in logged and "output" not in logged and logged["text_bytes"] == len(record["text"].encode())
    assert main(["log", "tail", "-n", "3", "--db", str(stack.deployment.escalation_log)]) == 0
    shown = capsys.readouterr().out
    assert "request_id" in shown and f"3 of {len(records)} records" in shown


def test_always_t4_policy_skips_the_router_and_answers_at_t4(stack):
    client = grpcclient.InferenceServerClient(stack.server.grpc_url)
    for task in ("cs_intent", "fin_summary"):
        output, meta, _ = route(client, stack.build.pools.dev[task][1]["text"], task, policy="always-t4")
        assert meta["policy"] == "always-t4" and meta["path"] == ["t4"] and meta["tier"] == "t4", meta
        assert meta["router"]["tier"] is None and meta["escalations"] == 0 and meta["cost_usd"] > 0
        _check_answer(task, stack.build.pools.dev[task][1]["text"], output, meta)
    client.close()


def test_route_command_over_grpc_and_http(stack, tmp_path, capsys):
    from routenlp.cli import main

    assert main(["route", "--url", stack.server.grpc_url, "--task", "legal_risk", "--max-tier", "t1", "The tenant shall indemnify the landlord."]) == 0
    printed = capsys.readouterr().out
    label_line, metadata = printed.split("\n", 1)
    assert json.loads(label_line)["label"] and json.loads(metadata)["path"] == ["t1"]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps({"task": r["task"], "text": r["text"], "request_id": f"file-{i}"}) for i, r in enumerate(stack.build.pools.dev["cs_intent"][:3])) + "\n")
    assert main(["route", "--file", str(requests), "--protocol", "http", "--url", stack.server.http_url, "--max-tier", "t2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["metadata"]["request_id"] for line in lines] == ["file-0", "file-1", "file-2"]
    assert all(json.loads(line["output"])["label"] for line in lines)


def test_bench_runs_every_system_through_the_server(stack, tmp_path):
    from clients.bench import run_bench
    from clients.bench_report import write_outputs
    from routenlp_core.serving_config import load_serving_config

    config = load_serving_config(stack.repository / MODEL / "1")
    records = [r for task in TASK_NAMES for r in stack.build.pools.dev[task][:2]]
    bench = run_bench(stack.server.grpc_url, stack.build, config, records, concurrency=2, n_boot=20, progress=False)
    names = [s["name"] for s in bench["systems"]]
    assert names == ["always-t1", "always-t2", "always-t3", "always-t4", "routenlp", "routenlp-no-cascade", "routenlp-fixed-threshold", "routenlp-router-no-cost", "routenlp-router-no-quality", "random (matched cost)", "rule-by-task", "tfidf-lr router",
                     "routellm-mf (T2/T4)", "routellm-mf (4-tier)", "hybridllm (T2/T4)", "hybridllm (4-tier)", "frugalgpt", "automix", "oracle"]  # fmt: skip
    by_name = {s["name"]: s for s in bench["systems"]}
    assert all(s["errors"] == 0 and s["p50_ms"] > 0 for s in bench["systems"])
    assert by_name["always-t4"]["cost_ratio"] == 1.0 and by_name["always-t4"]["mix"]["t4"] == 1.0
    assert by_name["oracle"]["cost_ratio"] <= by_name["always-t4"]["cost_ratio"]
    assert by_name["frugalgpt"]["requests_sent"] >= len(records)  # a cascade sends at least one request per record
    outputs = write_outputs(bench, tmp_path, "test")
    table = json.loads(Path(outputs["main_table"]).read_text())
    assert {"name", "quality_ratio", "cost_ratio", "p50_ms", "p99_ms", "sla_violation"} <= set(table[0])
    assert all(Path(outputs[k]).stat().st_size > 0 for k in ("pareto", "mix", "latency_cdf", "report"))


@pytest.fixture(scope="module")
def always_escalate(stack):
    """routenlp version 2: every t1-t3 answer is untrusted, so each request climbs to T4.
    Written like `routenlp calibrate` does and hot-loaded while the server keeps running."""
    thresholds = {task: {tier: -math.inf for tier in ("t1", "t2", "t3")} for task in TASK_NAMES}
    # a low escalation baseline and a short monitor window: the climb to T4 must raise the alert
    calibration = {"status": "test: always escalate", "escalation_baseline": {task: 0.1 for task in TASK_NAMES}, "monitor": {"window": 4, "min_requests": 1}}
    version_dir = write_calibrated_version(stack.repository, thresholds, calibration)
    url = f"http://{stack.server.http_url}/v2/repository/models/{MODEL}/load"
    # the repository API is restricted: without the admin key the load is refused
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b""), timeout=30)
    assert refused.value.code in (401, 403)
    started = time.perf_counter()
    request = urllib.request.Request(url, method="POST", data=b"", headers={ADMIN_HEADER: admin_key(stack.deployment.state_dir)})
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.status == 200
    print(f"\n[timing] routenlp version {version_dir.name} hot-loaded in {time.perf_counter() - started:.1f} s")
    return int(version_dir.name)


def test_escalation_reaches_t4_and_max_tier_t3_never_does(stack, always_escalate):
    client = grpcclient.InferenceServerClient(stack.server.grpc_url)
    before = _metrics(stack)
    for task in TASK_NAMES:
        text = stack.build.pools.dev[task][2]["text"]
        output, meta, seconds = route(client, text, task)
        assert meta["bls_version"] == str(always_escalate) and meta["repository_version"] == stack.version
        assert meta["tier"] == "t4" and meta["path"][-1] == "t4" and meta["fallback"] is None, meta
        assert meta["escalations"] == len(meta["path"]) - 1
        _check_answer(task, text, output, meta)
        capped_output, capped, _ = route(client, text, task, max_tier="t3")
        assert "t4" not in capped["path"] and capped["tier"] == "t3" and capped["max_tier"] == "t3"
        assert capped["fallback"] is None and capped["errors"] == {}
        print(f"\n[route] {task}: {'>'.join(meta['path'])} {seconds * 1000:.0f} ms ${meta['cost_usd']:.5f}; capped at t3: {'>'.join(capped['path'])} ${capped['cost_usd']:.5f}")
    after = _metrics(stack)
    client.close()
    # version 1's series leave /metrics while it unloads: compare version 2's only
    v2 = {"version": str(always_escalate)}
    assert _total(after, "routenlp_requests_total", tier="t4", **v2) - _total(before, "routenlp_requests_total", tier="t4", **v2) == len(TASK_NAMES)
    assert _total(after, "routenlp_escalations_total", **v2) > _total(before, "routenlp_escalations_total", **v2)
    assert _total(after, "routenlp_cost_dollars_total", tier="t4", **v2) > _total(before, "routenlp_cost_dollars_total", tier="t4", **v2)
    # every request escalated against a 10% baseline: the monitor's alert is up, in /metrics and the log
    assert _total(after, "routenlp_escalation_alert", **v2) >= 1
    assert "escalation-rate alert" in stack.server.log_path.read_text()


def test_t4_down_requests_are_still_answered_with_the_fallback_visible(stack, always_escalate):
    stack.t4.stop()
    client = grpcclient.InferenceServerClient(stack.server.grpc_url)
    before = _metrics(stack)
    for task in TASK_NAMES:
        text = stack.build.pools.dev[task][3]["text"]
        request_id = uuid.uuid4().hex
        output, meta, seconds = route(client, text, task, request_id=request_id)
        assert meta["request_id"] == request_id
        # climbed to T4 (or started there) and found it down: T3 answers, with a relaxed threshold
        assert meta["tier"] == "t3" and "t4" in meta["path"] and meta["path"].index("t4") >= len(meta["path"]) - 2, meta
        assert "t4 unavailable" in meta["fallback"] and "t4" in meta["errors"], meta
        assert output
        print(f"\n[fallback] {task}: {'>'.join(meta['path'])} answered by {meta['tier']} in {seconds * 1000:.0f} ms: {meta['fallback']}; t4 error: {meta['errors']['t4'][:90]}")
    after = _metrics(stack)
    v2 = {"version": str(always_escalate)}
    assert _total(after, "routenlp_fallbacks_total", tier="t4", **v2) - _total(before, "routenlp_fallbacks_total", tier="t4", **v2) == len(TASK_NAMES)
    # and a request that never needed T4 is unaffected
    output, meta, _ = route(client, stack.build.pools.dev["legal_risk"][0]["text"], "legal_risk", max_tier="t1")
    assert meta["path"] == ["t1"] and meta["fallback"] is None
    client.close()
