"""Reliability on the real stack: T4 faults injected between the BLS and a real T4 endpoint,
fuzzed requests over gRPC and HTTP, a short soak, the API key never leaking, a vLLM tier's stub
process SIGKILLed (requests fall back, the stub supervisor brings the tier back), and SIGKILL of
the server under load losing no escalation record. Nothing under test is mocked: tritonserver, the
BLS, vLLM tiers and the T4 vLLM server are real; clients/fault_proxy.py only breaks the wire to T4.

Rerun: `.venv/bin/python -m pytest -s tests/integration/test_reliability.py` (CI sizes) and
`make test-slow` (10,000+ fuzz cases, 10-minute soak).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from bls_router.escalation_log import EscalationLogReader
from clients.fault_proxy import FaultProxy
from clients.route_client import RouteClient
from export.repository_builder import MANIFEST, write_repository
from routenlp.deployment import Deployment
from routenlp.t4_endpoint import T4Endpoint
from routenlp_core.tasks import TASK_NAMES
from tests.integration.t4_behind_proxy import deployment_with_t4_behind_proxy

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 480
SECRET = "sk-routenlp-test-" + uuid.uuid4().hex  # the T4 API key; must never show anywhere
KEY_ENV = "ROUTENLP_T4_API_KEY"
T4_SETTINGS = {"ROUTENLP_T4_TIMEOUT_S": "1.5", "ROUTENLP_T4_MAX_RETRIES": "2", "ROUTENLP_T4_BREAKER_FAILURES": "6", "ROUTENLP_T4_BREAKER_RESET_S": "4"}
BREAKER_RESET_S = 4.0
FUZZ_EXAMPLES = int(os.environ.get("ROUTENLP_FUZZ_EXAMPLES", "150"))
SOAK_SECONDS = float(os.environ.get("ROUTENLP_SOAK_SECONDS", "60"))
# The swap test's new version: every model (full size), or all but the vLLM tiers (CI: their
# engines take a minute each to load twice; coopt's swaps under traffic reload T2 in CI).
SWAP_EVERY_MODEL = os.environ.get("ROUTENLP_SWAP_EVERY_MODEL", "") == "1"


@dataclass
class Chaos:
    deployment: Deployment
    t4: T4Endpoint
    proxy: FaultProxy
    build: object
    metadata_seen: list  # every METADATA string a test received (searched for the key)

    @property
    def grpc_url(self) -> str:
        return self.deployment.server.grpc_url


@pytest.fixture(scope="module")
def chaos(tiny_build, tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    repository = root / "model_repository"
    write_repository(tiny_build, repository, target="cpu")
    t4 = T4Endpoint(tiny_build.decoder_dir("t4"), root / "t4.log", api_key_env=KEY_ENV, env={KEY_ENV: SECRET})
    with deployment_with_t4_behind_proxy(t4, repository, START_TIMEOUT_S, state_dir=root / "state", extra_env={KEY_ENV: SECRET, **T4_SETTINGS}) as (deployment, proxy):
        yield Chaos(deployment, t4, proxy, tiny_build, [])


def _always_t4(chaos: Chaos, text: str = "my card has not arrived yet", task: str = "cs_intent"):
    client = RouteClient(chaos.grpc_url)
    try:
        answer = client.route(text, task, policy="always-t4", timeout_s=60)
    finally:
        client.close()
    chaos.metadata_seen.append(json.dumps(answer.metadata))
    return answer.metadata


def _heal(chaos: Chaos) -> None:
    """T4 healthy again, and every BLS instance's breaker closed with its failure streak ended:
    each of the two instances owns a breaker, and requests reach them in turn."""
    chaos.proxy.set_mode("pass")
    for _ in range(3):
        metas = [_always_t4(chaos) for _ in range(4)]
        if all(m["tier"] == "t4" for m in metas):
            return
        time.sleep(BREAKER_RESET_S + 0.5)  # an open breaker lets a trial call through after this
    raise AssertionError(f"T4 did not come back: {[m['errors'] for m in metas]}")


def test_t4_answers_through_the_proxy_with_the_key(chaos):
    chaos.proxy.set_mode("pass")
    meta = _always_t4(chaos)
    assert meta["tier"] == "t4" and meta["errors"] == {}, meta
    # the endpoint really requires the key: without it, 401
    request = urllib.request.Request(chaos.t4.base_url + "/completions", data=b'{"model": "t4", "prompt": "x", "max_tokens": 1}', headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401


@pytest.mark.parametrize(
    "mode, says",
    [
        ("status:500", "HTTP 500"),
        ("status:429", "HTTP 429"),
        ("malformed", "malformed response"),
        ("slow:4", "timeout after 1.5s"),
        ("down", "transport error"),
    ],
)
def test_t4_fault_falls_back_to_t3_visibly(chaos, mode, says):
    chaos.proxy.set_mode(mode)
    started = time.perf_counter()
    meta = _always_t4(chaos)
    seconds = time.perf_counter() - started
    _heal(chaos)  # and T4 answers again
    assert meta["tier"] == "t3" and meta["path"] == ["t4", "t3"], meta
    assert "t4 unavailable" in meta["fallback"] and says in meta["errors"]["t4"], meta
    print(f"\n[fault] {mode}: answered by t3 in {seconds:.1f} s; t4 error: {meta['errors']['t4'][:100]}")


def test_retries_are_bounded_per_fault(chaos):
    # 1 + ROUTENLP_T4_MAX_RETRIES attempts for what a retry can fix, 1 for the request's own fault
    faults = (("status:500", 3), ("status:429", 3), ("slow:4", 3), ("down", 3), ("malformed", 1), ("status:400", 1))
    for mode, attempts in faults:
        chaos.proxy.set_mode(mode)
        meta = _always_t4(chaos)
        hits = chaos.proxy.hits
        _heal(chaos)
        assert meta["tier"] == "t3" and hits == attempts, (mode, hits, meta)


def test_circuit_breaker_opens_and_closes_again(chaos):
    chaos.proxy.set_mode("status:503")
    calls = 20  # two BLS instances, 6 failed calls open each one's breaker
    metas = [_always_t4(chaos) for _ in range(calls)]
    hits = chaos.proxy.hits
    assert all(m["tier"] == "t3" for m in metas)
    opened = [m for m in metas if "circuit breaker open" in m["errors"]["t4"]]
    assert opened, [m["errors"]["t4"] for m in metas]
    assert hits < calls * 3  # open breakers failed fast, without requests
    chaos.proxy.set_mode("pass")
    time.sleep(BREAKER_RESET_S + 0.5)
    after = [_always_t4(chaos) for _ in range(6)]
    assert all(m["tier"] == "t4" for m in after), [m["errors"] for m in after]
    print(f"\n[breaker] {calls} calls with T4 failing: {len(opened)} failed fast, {hits} HTTP requests; closed again after {BREAKER_RESET_S:.0f} s")


def test_an_endpoint_echoing_the_key_gets_it_masked(chaos):
    # Real APIs echo a rejected key ("Incorrect API key provided: ..."); the error body reaches
    # METADATA and, for a retried 503, the retry warning in Triton's log (checked further down).
    for mode, attempts in (("echo_key:401", 1), ("echo_key:503", 3)):
        chaos.proxy.set_mode(mode)
        meta = _always_t4(chaos)
        hits = chaos.proxy.hits
        _heal(chaos)
        error = meta["errors"].get("t4", "")
        assert meta["tier"] == "t3" and hits == attempts and "Incorrect API key provided: Bearer ***" in error, (mode, hits, meta)
        assert SECRET not in json.dumps(meta)


# ---------------------------------------------------------------- fuzzing

_TEXTS = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.just(b""),
    st.just(b"x" * (32 * 1024 + 5)),
)
_TOKENS = st.one_of(st.sampled_from([t.encode() for t in TASK_NAMES] + [b"", b"nope", b"CS_INTENT", b"cs_intent "]), st.binary(max_size=12))
_OPTIONAL = st.one_of(st.none(), st.sampled_from([b"t1", b"t2", b"t4", b"t9", b"", b"always-t4", b"routenlp"]), st.binary(max_size=8))


@st.composite
def requests(draw):
    """(inputs as (name, array, dtype)), with wrong dtypes, shapes and names mixed in."""
    if draw(st.integers(0, 9)) < 4:  # 40% well-formed: real text for a real task, to be answered
        task = draw(st.sampled_from(TASK_NAMES))
        text = draw(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=120).filter(str.strip))
        return [("TEXT", np.array([[text.encode()]], dtype=object), "BYTES"), ("TASK", np.array([[task.encode()]], dtype=object), "BYTES")]
    inputs = [("TEXT", np.array([[draw(_TEXTS)]], dtype=object), "BYTES"), ("TASK", np.array([[draw(_TOKENS)]], dtype=object), "BYTES")]
    for name in ("MAX_TIER", "POLICY"):
        value = draw(_OPTIONAL)
        if value is not None:
            inputs.append((name, np.array([[value]], dtype=object), "BYTES"))
    twist = draw(st.sampled_from(["none"] * 6 + ["int_text", "batch", "drop_task", "extra_input", "float_task"]))
    if twist == "int_text":
        inputs[0] = ("TEXT", np.array([[7]], dtype=np.int32), "INT32")
    elif twist == "batch":
        inputs = [(n, np.repeat(a, 2, axis=0), d) for n, a, d in inputs]
    elif twist == "drop_task":
        inputs = [i for i in inputs if i[0] != "TASK"]
    elif twist == "extra_input":
        inputs.append(("SURPRISE", np.array([[b"x"]], dtype=object), "BYTES"))
    elif twist == "float_task":
        inputs[1] = ("TASK", np.array([[1.5]], dtype=np.float32), "FP32")
    return inputs


def _infer(module, client, inputs):
    tensors = []
    for name, array, dtype in inputs:
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return client.infer("routenlp", tensors)


ALLOWED_ERRORS = ("INVALID_ARG", "400", "Bad Request", "unexpected", "inference input", "expected", "must")


def _fuzz(module, url, chaos, examples):
    client = module.InferenceServerClient(url)
    outcomes = {"answered": 0, "refused": 0}

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    @given(requests())
    def case(inputs):
        try:
            result = _infer(module, client, inputs)
        except InferenceServerException as err:
            text = f"{err.status()} {err.message()}"
            assert "INTERNAL" not in text and "Stub process" not in text and "crash" not in text.lower(), text
            assert "UNAVAILABLE" not in text, text  # a valid request must be answered (T4 is up)
            outcomes["refused"] += 1
            return
        meta = json.loads(result.as_numpy("METADATA").reshape(-1)[0])
        chaos.metadata_seen.append(json.dumps(meta))
        assert meta["tier"] in ("t1", "t2", "t3", "t4") and result.as_numpy("OUTPUT") is not None
        outcomes["answered"] += 1

    case()
    client.close()
    # and a good request succeeds afterwards
    meta = _always_t4(chaos)
    assert meta["tier"] == "t4"
    return outcomes


def test_fuzzed_requests_over_grpc_get_an_answer_or_a_clear_error(chaos):
    chaos.proxy.set_mode("pass")
    outcomes = _fuzz(grpcclient, chaos.grpc_url, chaos, FUZZ_EXAMPLES)
    print(f"\n[fuzz] gRPC: {FUZZ_EXAMPLES} cases: {outcomes}")
    assert outcomes["refused"] > 0 and outcomes["answered"] > 0


def test_fuzzed_requests_over_http_get_an_answer_or_a_clear_error(chaos):
    chaos.proxy.set_mode("pass")
    outcomes = _fuzz(httpclient, chaos.deployment.server.http_url, chaos, FUZZ_EXAMPLES)
    print(f"\n[fuzz] HTTP: {FUZZ_EXAMPLES} cases: {outcomes}")
    assert outcomes["refused"] > 0 and outcomes["answered"] > 0


# ---------------------------------------------------------------- soak


def _tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and its descendants (tritonserver + backend stubs)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in open(f"/proc/{current}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
        stack += children.get(current, [])
    return total


def test_short_soak_serves_every_request(chaos):
    chaos.proxy.set_mode("pass")
    records = [r for task in TASK_NAMES for r in chaos.build.pools.dev[task][:10]]
    pid = chaos.deployment.server.process.pid
    rss_before = _tree_rss_kb(pid)
    counts = {"sent": 0, "errors": 0}
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + SOAK_SECONDS

    def worker(offset):
        client = RouteClient(chaos.grpc_url)
        i = offset
        while time.monotonic() < deadline:
            record = records[i % len(records)]
            started = time.perf_counter()
            try:
                client.route(record["text"], record["task"], max_tier="t3", timeout_s=60)
                ok = True
            except InferenceServerException:
                ok = False
            with lock:
                counts["sent"] += 1
                counts["errors"] += 0 if ok else 1
                latencies.append((time.perf_counter() - started) * 1e3)
            i += 3
        client.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rss_after = _tree_rss_kb(pid)
    p99 = float(np.percentile(latencies, 99))
    print(f"\n[soak] {SOAK_SECONDS:.0f} s at concurrency 3: {counts['sent']} requests, {counts['errors']} errors, p99 {p99:.0f} ms, "
          f"server memory {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB ({(rss_after - rss_before) / 1024:+.0f} MiB)")  # fmt: skip
    assert counts["errors"] == 0 and counts["sent"] > 0
    assert rss_after < rss_before * 1.25  # no runaway growth


# ---------------------------------------------------------------- secrets (after the traffic above)


def test_the_api_key_never_reaches_logs_metadata_metrics_or_the_escalation_log(chaos):
    with urllib.request.urlopen(chaos.deployment.server.metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    places = {"metrics": metrics, "metadata": "\n".join(chaos.metadata_seen)}
    for path in chaos.deployment.state_dir.iterdir():  # tritonserver.log, escalation log (+ WAL), admin key
        places[path.name] = path.read_bytes().decode("utf-8", errors="replace")
    assert len(chaos.metadata_seen) > 20 and "routenlp_requests_total" in metrics
    leaked = [name for name, text in places.items() if SECRET in text]
    assert leaked == [], f"the T4 key appears in {leaked}"


def test_oversized_text_is_refused_and_text_at_the_limit_answered(chaos):
    from routenlp.deployment import latest_serving_config

    limit = latest_serving_config(chaos.deployment.repository).max_text_bytes
    client = RouteClient(chaos.grpc_url)
    try:
        meta = client.route(("word " * limit)[:limit], "legal_risk", max_tier="t1", timeout_s=60).metadata
        with pytest.raises(InferenceServerException) as refused:
            client.route("x" * (limit + 1), "legal_risk", max_tier="t1", timeout_s=60)
    finally:
        client.close()
    assert meta["tier"] == "t1"
    assert "INVALID_ARG" in str(refused.value.status()) and f"the limit is {limit} bytes" in refused.value.message()


def test_raw_request_text_is_kept_nowhere_by_default(chaos):
    marker = uuid.uuid4().hex
    request_id = f"text-{marker[:8]}"
    client = RouteClient(chaos.grpc_url)
    try:
        client.route(f"my card {marker} has not arrived", "cs_intent", max_tier="t1", request_id=request_id, timeout_s=60)
    finally:
        client.close()
    with EscalationLogReader(chaos.deployment.escalation_log) as reader:
        assert request_id in reader.request_ids()  # logged, without its text
    # every file the deployment writes: the escalation log (+ WAL), Triton's log, the supervisor's
    leaked = [path.name for path in chaos.deployment.state_dir.iterdir() if marker.encode() in path.read_bytes()]
    assert leaked == [], f"the request text appears in {leaked}"


# ---------------------------------------------------------------- a vLLM tier's stub killed

STUB_BINARY = "triton_python_backend_stub"
RECOVERY_TIMEOUT_S = 300.0  # detection (two supervisor polls) + a vLLM engine start, on 2 busy cores
STRUCTURED_FALLBACK = "t2 unavailable: structured task to t1"
GENERATION_FALLBACK = "t2 unavailable: generation task to t4"


def _process_table() -> dict[int, tuple[int, int, list[str]]]:
    """pid -> (ppid, pgid, argv) of every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                argv = [a.decode(errors="replace") for a in open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0") if a]
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                table[int(entry)] = (int(fields[1]), int(fields[2]), argv)
    return table


def _stub_pid(server_pid: int, instance: str) -> int | None:
    """The python-backend stub of a model instance: a child of tritonserver launched as
    `triton_python_backend_stub <repo>/<model>/<version>/model.py ... <instance> DEFAULT`."""
    for pid, (ppid, _, argv) in _process_table().items():
        if ppid == server_pid and argv and argv[0].endswith(STUB_BINARY) and instance in argv:
            return pid
    return None


def _engine_cores(server_pid: int) -> list[int]:
    """vLLM engine-core processes in the server's process group (one per live T2/T3 engine)."""
    return sorted(pid for pid, (_, pgid, argv) in _process_table().items() if pgid == server_pid and argv and argv[0].startswith("VLLM::EngineCore"))


def _t2_routed_generation(chaos: Chaos) -> list[tuple[str, str]]:
    """(task, text) pairs that the router starts at T2 with MAX_TIER t4: where a dead T2 must fall
    back to T4 (a fixed always-t2 policy caps the request at T2, so it has nowhere to go)."""
    client = RouteClient(chaos.grpc_url)
    found = []
    try:
        for task in ("fin_summary", "cs_response"):
            for record in chaos.build.pools.dev[task][:20]:
                if client.route(record["text"], task, timeout_s=60).metadata["start_tier"] == "t2":
                    found.append((task, record["text"]))
    finally:
        client.close()
    return found[:10]


@dataclass
class Outcome:
    kind: str
    started: float  # time.perf_counter()
    ended: float
    verdict: str  # t2 | fallback | elsewhere | error | lost
    detail: str
    request_id: str | None = None
    meta: dict | None = None


def _judge(meta: dict | None, err: Exception | None) -> tuple[str, str]:
    """What one request's answer says about the dead tier: T2 answered (or escalated as usual),
    answered through a named fallback, answered without T2 (the router started elsewhere), a clear
    Triton error naming T2, or lost (a hang, a timeout, an unclear error)."""
    if err is not None:
        message = f"{err.status()} {err.message()}" if isinstance(err, InferenceServerException) else repr(err)
        clear = "UNAVAILABLE" in message and "t2" in message and ("not healthy" in message or "no tier could answer" in message)
        return ("error" if clear else "lost"), message[:200]
    if "t2" not in meta["errors"]:
        return ("t2" if meta["path"][0] == "t2" else "elsewhere"), meta["tier"]
    fallback = meta["fallback"] or ""
    # (a second fallback, e.g. T4 timing out after T2, names only itself; errors keep T2's)
    if meta["path"][0] == "t2" and meta["tier"] != "t2" and "unavailable" in fallback:
        return "fallback", fallback
    return "lost", f"t2 failed without a named fallback: {meta}"  # an answer that hides the failure


def _t2_traffic(chaos: Chaos, kinds: dict, outcomes: list, stop: threading.Event) -> list[threading.Thread]:
    """One client thread per kind of request, each sending until `stop`."""

    def worker(kind: str, requests_: list) -> None:
        client = RouteClient(chaos.grpc_url)
        i = 0
        while not stop.is_set():
            task, text, policy = requests_[i % len(requests_)]
            request_id = f"stub-{kind}-{i}"
            started = time.perf_counter()
            meta = err = None
            try:
                meta = client.route(text, task, policy=policy, request_id=request_id, timeout_s=30).metadata
            except Exception as caught:  # judged below: only a clear Triton error is acceptable
                err = caught
            verdict, detail = _judge(meta, err)
            outcomes.append(Outcome(kind, started, time.perf_counter(), verdict, detail, request_id if meta else None, meta))
            i += 1
            time.sleep(0.1)
        client.close()

    threads = [threading.Thread(target=worker, args=item) for item in kinds.items()]
    for thread in threads:
        thread.start()
    return threads


def _wait_until_t2_answers_again(outcomes: list, killed: float, timeout_s: float) -> float | None:
    """Seconds from the kill to the first request, sent after it, that T2 answered itself."""
    while time.perf_counter() < killed + timeout_s:
        back = [o.ended for o in list(outcomes) if o.started > killed and o.verdict == "t2" and o.kind == "structured"]
        if back:
            return min(back) - killed
        time.sleep(1.0)
    return None


def test_killed_vllm_stub_falls_back_visibly_and_the_tier_comes_back(chaos):
    chaos.proxy.set_mode("pass")
    server_pid = chaos.deployment.server.process.pid
    records = chaos.build.pools.dev
    generation = _t2_routed_generation(chaos)
    assert generation, "the router starts no generation text at t2: the generation fallback cannot be exercised"
    kinds = {
        "structured": [("cs_intent", r["text"], "always-t2") for r in records["cs_intent"][:10]],  # -> T1
        "generation": [(task, text, None) for task, text in generation],  # routed, starts at T2 -> T4
        "fixed-t2": [("cs_response", r["text"], "always-t2") for r in records["cs_response"][:10]],  # nowhere to go
    }
    stub = _stub_pid(server_pid, "t2_0_0")
    assert stub is not None, "no python-backend stub for t2_0_0 among tritonserver's children"
    cores_before = _engine_cores(server_pid)
    versions_before = _live_t2_version(chaos)
    recoveries_before = len(chaos.deployment.supervisor.recoveries)

    outcomes: list[Outcome] = []
    stop = threading.Event()
    threads = _t2_traffic(chaos, kinds, outcomes, stop)
    time.sleep(3.0)  # T2 answering under traffic first
    killed = time.perf_counter()
    os.kill(stub, signal.SIGKILL)
    back_s = _wait_until_t2_answers_again(outcomes, killed, RECOVERY_TIMEOUT_S)
    time.sleep(3.0)  # and a few more requests once it is back
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a client is still waiting: a request hangs"

    after = [o for o in outcomes if o.ended > killed]  # in flight at the kill, or sent after it
    counts = {kind: {v: sum(1 for o in after if o.kind == kind and o.verdict == v) for v in ("t2", "fallback", "elsewhere", "error", "lost")} for kind in kinds}
    print(f"\n[stub] SIGKILL of the t2 stub (pid {stub}) under traffic: {len(after)} requests in flight or sent after the kill: "
          f"{sum(c['fallback'] for c in counts.values())} answered with the fallback, {sum(c['error'] for c in counts.values())} errored, "
          f"{sum(c['lost'] for c in counts.values())} lost; t2 answering again {back_s if back_s is None else round(back_s, 1)} s after the kill")  # fmt: skip
    print(f"[stub] by kind: {counts}")
    # (Triton itself logs nothing when a stub dies; the supervisor's log says what it did)
    supervisor_log = chaos.deployment.state_dir / "stub_supervisor.log"
    print("[stub] " + "\n[stub] ".join(supervisor_log.read_text().splitlines()[-2:] if supervisor_log.exists() else ["no supervisor log"]))

    lost = [o for o in outcomes if o.verdict == "lost"]
    assert lost == [], lost[:5]
    # nothing with a fallback fails: structured -> T1, routed generation -> T4, visibly
    assert counts["structured"]["error"] == 0 and counts["generation"]["error"] == 0, [o.detail for o in after if o.verdict == "error" and o.kind != "fixed-t2"][:5]
    assert counts["structured"]["fallback"] > 0 and counts["generation"]["fallback"] > 0 and counts["fixed-t2"]["error"] > 0, counts
    fallbacks = [o for o in after if o.verdict == "fallback"]
    assert all(o.detail == STRUCTURED_FALLBACK and o.meta["tier"] == "t1" for o in fallbacks if o.kind == "structured"), fallbacks[:3]
    assert all(o.meta["path"][:2] == ["t2", "t4"] for o in fallbacks if o.kind == "generation"), fallbacks[:3]
    assert any(o.detail == GENERATION_FALLBACK for o in fallbacks if o.kind == "generation"), fallbacks[:3]
    # ... and durably: each answered request is in the escalation log with its fallback
    with EscalationLogReader(chaos.deployment.escalation_log) as reader:
        logged = {r["request_id"]: r for r in reader.records() if r["request_id"].startswith("stub-")}
    assert all(o.request_id in logged and logged[o.request_id]["fallback"] == o.meta["fallback"] for o in fallbacks)

    # the tier came back by itself: T2 answers every kind again (the routed one may escalate as
    # usual), with no fallback, at the same version
    assert back_s is not None, f"t2 not answering {RECOVERY_TIMEOUT_S:.0f} s after its stub was killed"
    client = RouteClient(chaos.grpc_url)
    try:
        for requests_ in kinds.values():
            task, text, policy = requests_[0]
            meta = client.route(text, task, policy=policy, timeout_s=60).metadata
            assert meta["path"][0] == "t2" and meta["fallback"] is None and meta["errors"] == {}, meta
            assert meta["tier"] == "t2" or policy is None, meta
    finally:
        client.close()
    assert _stub_pid(server_pid, "t2_0_0") not in (None, stub)
    assert _live_t2_version(chaos) == versions_before
    [recovery] = [r for r in chaos.deployment.supervisor.recoveries[recoveries_before:] if r.model == "t2"]
    assert recovery.error is None and recovery.instances == ["t2_0_0"]
    # the dead stub's engine core was killed, not left holding its KV cache next to the new one
    assert len(_engine_cores(server_pid)) == len(cores_before), (cores_before, _engine_cores(server_pid))


def _live_t2_version(chaos: Chaos) -> dict[str, int]:
    from routenlp.repository_api import live_versions

    return live_versions(_api(chaos), ["t2"])


# ---------------------------------------------------------------- live swap and rollback


def _api(chaos):
    from routenlp.deployment import admin_key
    from routenlp.repository_api import RepositoryAPI

    return RepositoryAPI(chaos.deployment.server.http_url, admin_key(chaos.deployment.state_dir))


def _smoke(chaos):
    from routenlp.repository_api import smoke_check

    return smoke_check(chaos.grpc_url, TASK_NAMES, lambda task: chaos.build.pools.dev[task][0]["text"])


def test_new_version_goes_live_under_traffic_without_a_failed_request_and_rolls_back(chaos):
    from coopt.traffic import TrafficLoop
    from routenlp.repository_api import deploy

    repository = chaos.deployment.repository
    everything = json.loads((repository / MANIFEST).read_text())["versions"][-1]["models"]
    force = True if SWAP_EVERY_MODEL else [name for name in everything if name not in ("t2", "t3")]
    written = write_repository(chaos.build, repository, target="cpu", force=force)
    new = written["version"]
    assert set(written["model_versions"].values()) == ({new} if SWAP_EVERY_MODEL else {1, new}), written["model_versions"]
    records = [r for task in TASK_NAMES for r in chaos.build.pools.dev[task][:5]]
    traffic = TrafficLoop(chaos.grpc_url, records, concurrency=2).start()
    traffic.wait_for(10)
    started = time.perf_counter()
    result = deploy(_api(chaos), repository, new, _smoke(chaos), log=print)
    swap_s = time.perf_counter() - started
    traffic.wait_for(traffic.sent + 10)
    forward = traffic.stop()
    print(f"\n[swap] version {result['before']} -> {new} in {swap_s:.0f} s under traffic: {forward}")
    assert forward["failed"] == 0 and f"{new}/{new}" in forward["answered_by_bls/repository_version"]
    # rollback to version 1, again under traffic
    traffic = TrafficLoop(chaos.grpc_url, records, concurrency=2).start()
    traffic.wait_for(10)
    deploy(_api(chaos), repository, 1, _smoke(chaos), log=print)
    traffic.wait_for(traffic.sent + 10)
    back = traffic.stop()
    print(f"[swap] rollback to version 1 under traffic: {back}")
    assert back["failed"] == 0 and "1/1" in back["answered_by_bls/repository_version"]


def test_a_version_that_fails_to_load_never_goes_live(chaos):
    from routenlp.repository_api import DeployError, deploy, live_versions

    repository = chaos.deployment.repository
    broken = write_repository(chaos.build, repository, target="cpu", force=True)["version"]
    (repository / "t1_legal_risk" / str(broken) / "model.onnx").write_bytes(b"not an onnx model")
    before = live_versions(_api(chaos), ["routenlp", "t1_legal_risk", "t2"])
    with pytest.raises(DeployError, match=f"repository version {broken} not deployed"):
        deploy(_api(chaos), repository, broken, _smoke(chaos), log=print)
    assert live_versions(_api(chaos), ["routenlp", "t1_legal_risk", "t2"]) == before
    meta = RouteClient(chaos.grpc_url).route("We may terminate this at any time.", "legal_risk", max_tier="t1").metadata
    assert meta["repository_version"] == 1


# ---------------------------------------------------------------- crash: runs last, kills the server


def test_sigkill_under_load_keeps_every_answered_request_in_the_escalation_log(chaos):
    records = [r for task in ("legal_risk", "cs_intent", "fin_ner") for r in chaos.build.pools.dev[task][:10]]
    answered: list[str] = []
    failed = [0]
    stop = threading.Event()

    def worker(offset):
        client = RouteClient(chaos.grpc_url)
        i = offset
        while not stop.is_set():
            record = records[i % len(records)]
            request_id = f"kill-{offset}-{i}"
            try:
                client.route(record["text"], record["task"], max_tier="t1", request_id=request_id, timeout_s=10)
                answered.append(request_id)
            except Exception:  # the server died mid-request: that request had no success response
                failed[0] += 1
                if stop.is_set() or failed[0] > 5:
                    break
            i += 2
        client.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    time.sleep(4.0)
    os.killpg(chaos.deployment.server.process.pid, signal.SIGKILL)  # tritonserver and its stubs, no cleanup
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(answered) > 20
    # opening the log recovers its WAL, as a restarted server would
    with EscalationLogReader(chaos.deployment.escalation_log) as reader:
        logged = reader.request_ids()
    missing = [rid for rid in answered if rid not in logged]
    print(f"\n[crash] SIGKILL under load: {len(answered)} answered before the kill, {failed[0]} cut off, {len(missing)} answered requests missing from the log")
    assert missing == []
    assert sqlite3.connect(chaos.deployment.escalation_log).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
