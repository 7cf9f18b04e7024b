"""The OpenAI-compatible gateway on the real stack, through the official `openai` client.

One module-wide stack, as `routenlp serve` runs it (Deployment with openai_port): the tiny-profile
repository in tritonserver (router, T1 heads, T2/T3 vLLM tiers, the BLS), the gateway process, and
a real vLLM T4 endpoint behind clients/fault_proxy.py so a test can take T4 down and bring it back.
Tenants come from <state>/tenants.toml (hashes only); the budget ledger is the gateway's SQLite.

In file order: models, chat + completions for every task (T1 answers equal to direct gRPC),
streaming, errors (same messages as the KServe endpoint), the budget cap under racing requests,
tier health through a T4 outage and its recovery, fuzzed bodies, and last Triton stopped (503).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
import uuid
from dataclasses import dataclass

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.fault_proxy import FaultProxy
from clients.route_client import RouteClient
from export.repository_builder import write_repository
from gateway.ledger import BudgetLedger
from gateway.pricing import max_cost
from gateway.tenants import hash_key
from routenlp.deployment import Deployment
from routenlp.t4_endpoint import T4Endpoint
from routenlp_core.serving_config import load_serving_config
from routenlp_core.tasks import TASK_NAMES, get_task
from tests.integration.t4_behind_proxy import deployment_with_t4_behind_proxy

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 480
BREAKER_RESET_S = 4.0
T4_SETTINGS = {"ROUTENLP_T4_TIMEOUT_S": "2", "ROUTENLP_T4_MAX_RETRIES": "0", "ROUTENLP_T4_BREAKER_FAILURES": "2", "ROUTENLP_T4_BREAKER_RESET_S": str(BREAKER_RESET_S)}
FUZZ_EXAMPLES = int(os.environ.get("ROUTENLP_GATEWAY_FUZZ_EXAMPLES", "30"))
KEYS = {"main": "rnlp-main-" + uuid.uuid4().hex, "tight": "rnlp-tight-" + uuid.uuid4().hex, "revoked": "rnlp-revoked-" + uuid.uuid4().hex}
TIGHT_REQUESTS = 4  # the tight tenant's daily cap: this many T1-capped requests at their maximum cost


@dataclass
class Stack:
    deployment: Deployment
    proxy: FaultProxy
    build: object
    config: object
    tight_cap: float

    @property
    def base_url(self) -> str:
        return self.deployment.gateway.base_url

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def client(self, tenant: str = "main", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=KEYS[tenant], max_retries=0, timeout=120, **kwargs)

    def tiers(self) -> dict:
        return httpx.get(self.root_url + "/health/tiers", timeout=10).json()["tiers"]


@pytest.fixture(scope="module")
def stack(tiny_build, tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway")
    repository = root / "model_repository"
    written = write_repository(tiny_build, repository, target="cpu")
    config = load_serving_config(repository / "routenlp" / str(written["version"]))
    tight_cap = TIGHT_REQUESTS * max_cost(config, "cs_intent", "t1")
    state = root / "state"
    state.mkdir()
    (state / "tenants.toml").write_text(
        f'[tenants.main]\nkeys = ["{hash_key(KEYS["main"])}"]\ndaily_usd = 1000.0\n'
        f'[tenants.tight]\nkeys = ["{hash_key(KEYS["tight"])}"]\ndaily_usd = {tight_cap!r}\n'
        f'[tenants.former]\nkeys = []\nrevoked = ["{hash_key(KEYS["revoked"])}"]\ndaily_usd = 1.0\n'
    )
    # normal priority: it starts beside a loading Triton, and at nice 19 on a busy shared runner it
    # did not get the CPU to start within START_TIMEOUT_S; it serves only a handful of requests here
    t4 = T4Endpoint(tiny_build.decoder_dir("t4"), root / "t4.log", nice=None)
    started = time.perf_counter()
    with deployment_with_t4_behind_proxy(t4, repository, START_TIMEOUT_S, state_dir=state, extra_env=T4_SETTINGS, openai_port=0) as (deployment, proxy):
        print(f"\n[timing] tritonserver + gateway + T4 ready in {time.perf_counter() - started:.0f} s; logs {state}")
        yield Stack(deployment, proxy, tiny_build, config, tight_cap)
    assert KEYS["main"] not in (state / "gateway.log").read_text()  # keys never reach the log


def _text(stack: Stack, task: str, index: int = 0) -> str:
    return stack.build.pools.dev[task][index]["text"]


def _check_output(task: str, text: str, content: str) -> None:
    kind = get_task(task).kind
    if kind == "classification":
        assert isinstance(json.loads(content)["label"], str)
    elif kind == "ner":
        assert len(json.loads(content)["tags"]) == len(text.split())
    else:
        assert isinstance(content, str)


def test_models_name_every_task(stack):
    ids = [model.id for model in stack.client().models.list()]
    assert ids == [f"routenlp-{task}" for task in TASK_NAMES] + ["routenlp"]
    assert stack.client().models.retrieve("routenlp-cs_intent").id == "routenlp-cs_intent"


def test_chat_and_completions_answer_every_task(stack):
    client = stack.client()
    direct = RouteClient(stack.deployment.server.grpc_url)
    rows = []
    for task in TASK_NAMES:
        text = _text(stack, task)
        raw = client.chat.completions.with_raw_response.create(model=f"routenlp-{task}", messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": text}])
        chat = raw.parse()
        meta = chat.model_extra["routenlp"]
        content = chat.choices[0].message.content
        _check_output(task, text, content)
        assert chat.choices[0].finish_reason == "stop" and chat.object == "chat.completion" and chat.model == f"routenlp-{task}"
        assert meta["task"] == task and meta["tier"] in meta["path"] and meta["cost_usd"] > 0 and meta["errors"] == {}
        assert raw.headers["x-routenlp-tier"] == meta["tier"] and raw.headers["x-routenlp-path"] == ">".join(meta["path"])
        assert raw.headers["x-request-id"] == meta["request_id"] and float(raw.headers["x-routenlp-budget-remaining-usd"]) < 1000
        assert chat.usage.total_tokens == sum(meta["tokens"].values())
        assert (chat.usage.completion_tokens > 0) == (meta["tier"] != "t1")  # T1 classifies, writes no tokens
        completion = client.completions.create(model="routenlp", prompt=text, extra_body={"task": task, "max_tier": "t3"}, extra_headers={"X-Request-Id": f"gw-{task}"})
        cmeta = completion.model_extra["routenlp"]
        assert cmeta["request_id"] == f"gw-{task}" and cmeta["max_tier"] == "t3" and "t4" not in cmeta["path"]
        _check_output(task, text, completion.choices[0].text)
        if get_task(task).structured:  # the same request over gRPC gets the same T1 answer
            capped = client.chat.completions.create(model=f"routenlp-{task}", messages=[{"role": "user", "content": text}], extra_headers={"X-RouteNLP-Max-Tier": "t1"})
            assert capped.choices[0].message.content == direct.route(text, task, max_tier="t1").output
            assert capped.model_extra["routenlp"]["path"] == ["t1"]
        rows.append(f"  {task:13s} chat {'>'.join(meta['path']):9s} ${meta['cost_usd']:.6f}  completion {'>'.join(cmeta['path'])}")
    direct.close()
    print("\n[gateway] every task:\n" + "\n".join(rows))


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_streaming_sends_the_accepted_answer_then_the_metadata(stack, kind):
    client = stack.client()
    task, text = "cs_response", _text(stack, "cs_response", 1)
    if kind == "chat":
        whole = client.chat.completions.create(model=f"routenlp-{task}", messages=[{"role": "user", "content": text}], extra_body={"policy": "always-t2"})
        expected = whole.choices[0].message.content
        stream = client.chat.completions.create(model=f"routenlp-{task}", messages=[{"role": "user", "content": text}], stream=True, stream_options={"include_usage": True}, extra_body={"policy": "always-t2"})
        chunks = list(stream)
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[0].object == "chat.completion.chunk"
    else:
        whole = client.completions.create(model=f"routenlp-{task}", prompt=text, extra_body={"policy": "always-t2"})
        expected = whole.choices[0].text
        chunks = list(client.completions.create(model=f"routenlp-{task}", prompt=text, stream=True, stream_options={"include_usage": True}, extra_body={"policy": "always-t2"}))
        content = "".join(c.choices[0].text for c in chunks if c.choices)
    assert content == expected and content  # greedy decoding: the same answer streamed or not
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert len(finished) == 1 and finished[0].model_extra["routenlp"]["tier"] == "t2"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0 and not chunks[-1].choices


def _grpc_error(stack: Stack, text: str, task: str, **kwargs) -> str:
    from tritonclient.utils import InferenceServerException

    client = RouteClient(stack.deployment.server.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.route(text, task, **kwargs)
    finally:
        client.close()
    return caught.value.message()


@pytest.mark.parametrize(
    "text, task, extra, says",
    [
        ("", "cs_intent", {}, "TEXT is empty"),
        ("x" * (32 * 1024 + 1), "cs_intent", {}, "TEXT is 32769 bytes; the limit is 32768 bytes"),
        ("hello", "cs_intnt", {}, "unknown TASK 'cs_intnt'; valid tasks: cs_intent"),
        ("hello", "cs_intent", {"max_tier": "t9"}, "MAX_TIER must be one of t1, t2, t3, t4"),
        ("hello", "fin_summary", {"max_tier": "t1"}, "generation tasks are served by t2-t4"),
        ("hello", "cs_intent", {"policy": "cheapest"}, "POLICY must be one of routenlp"),
    ],
    ids=["empty", "too-big", "unknown-task", "bad-max-tier", "t1-for-generation", "bad-policy"],
)
def test_bad_requests_get_400_with_the_kserve_endpoints_message(stack, text, task, extra, says):
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(model="routenlp", messages=[{"role": "user", "content": text}], extra_body={"task": task, **extra})
    assert caught.value.status_code == 400 and says in caught.value.message
    assert caught.value.body["type"] == "invalid_request_error"
    assert caught.value.body["message"] == _grpc_error(stack, text, task, **extra)  # word for word


def test_auth_model_and_shape_errors_use_openais_schema(stack):
    for tenant, says in (("revoked", "API key revoked"),):
        with pytest.raises(openai.AuthenticationError, match=says):
            stack.client(tenant).models.list()
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        openai.OpenAI(base_url=stack.base_url, api_key="rnlp-guessed", max_retries=0).models.list()
    response = httpx.post(stack.base_url + "/chat/completions", json={"model": "routenlp-cs_intent", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as missing:
        stack.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["code"] == "model_not_found" and "routenlp-cs_intent" in missing.value.message
    for call, says in (
        (lambda c: c.chat.completions.create(model="routenlp-cs_intent", messages=[{"role": "user", "content": "hi"}], n=2), "at n:"),
        (lambda c: c.completions.create(model="routenlp-cs_intent", prompt=["one", "two"]), "one string"),
        (lambda c: c.chat.completions.create(model="routenlp-cs_intent", messages=[{"role": "assistant", "content": "hi"}]), "role 'user'"),
        (lambda c: c.chat.completions.create(model="routenlp", messages=[{"role": "user", "content": "hi"}]), "needs the task"),
    ):
        with pytest.raises(openai.BadRequestError, match=says):
            call(stack.client())
    bad_json = httpx.post(stack.base_url + "/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEYS['main']}", "Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"


def test_budget_cap_refuses_with_429_and_racing_requests_overspend_less_than_one_request(stack):
    """The tight tenant's cap is 4 T1-capped requests at their maximum cost; 8 threads race it."""
    client = stack.client("tight")
    text = _text(stack, "cs_intent", 3)
    one_max = max_cost(stack.config, "cs_intent", "t1")
    outcomes: list[str] = []

    def request() -> str:
        try:
            client.chat.completions.create(model="routenlp-cs_intent", messages=[{"role": "user", "content": text}], extra_body={"max_tier": "t1"})
            return "answered"
        except openai.RateLimitError as err:
            assert err.body["type"] == "insufficient_quota" and err.response.headers["x-routenlp-budget-remaining-usd"] == "0.000000"
            assert int(err.response.headers["retry-after"]) > 0 and "no daily budget left" in err.message
            return "refused"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(4):  # racing: the holds of requests in flight already refuse some
            outcomes += list(pool.map(lambda _: request(), range(8)))
            if "refused" in outcomes:
                break
    raced = outcomes.count("answered")
    for _ in range(60):  # then one at a time until the spend itself reaches the cap
        if request() == "refused":
            break
    with BudgetLedger(stack.deployment.state_dir / "gateway_ledger.sqlite") as ledger:
        spent = ledger.spent_usd("tight")
    print(f"\n[budget] cap ${stack.tight_cap:.8f} (one request at most ${one_max:.8f}): 8 racing clients {raced} answered, "
          f"{outcomes.count('refused')} refused; then refused at spend ${spent:.8f}")  # fmt: skip
    assert "refused" in outcomes and raced >= 1
    assert stack.tight_cap <= spent < stack.tight_cap + one_max  # refused only at the cap; the stated bound
    metrics = httpx.get(stack.root_url + "/metrics", timeout=10).text
    assert 'routenlp_gateway_refusals_total{reason="budget",tenant="tight"}' in metrics
    assert 'routenlp_gateway_spend_dollars_total{tenant="tight"}' in metrics


def _wait_for_state(stack: Stack, tier: str, state: str, limit_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if stack.tiers()[tier]["state"] == state:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{tier} not {state} after {limit_s} s: {stack.tiers()[tier]}")


def test_t4_outage_and_recovery_show_on_the_health_endpoint_within_a_breaker_period(stack):
    stack.proxy.set_mode("pass")
    _wait_for_state(stack, "t4", "serving", 3 * BREAKER_RESET_S)
    stack.client().chat.completions.create(model="routenlp-legal_risk", messages=[{"role": "user", "content": _text(stack, "legal_risk")}], extra_body={"max_tier": "t1"})
    time.sleep(2 * BREAKER_RESET_S / 3 + 0.5)  # two probe cycles: Triton's counters scraped after it
    tiers = stack.tiers()
    assert tiers["t2"]["state"] == "serving" and tiers["t2"]["version"] == {"t2": ["1"]}
    assert tiers["t4"]["version"]["model"] and tiers["t1"]["requests_last_minute"] >= 1
    stack.proxy.set_mode("down")
    shown = _wait_for_state(stack, "t4", "open", 2 * BREAKER_RESET_S)
    t4 = stack.tiers()["t4"]
    assert t4["open_until"] and "GET /models failed" in t4["last_error"]["message"] and t4["error_rate"] > 0
    chat = stack.client().chat.completions.with_raw_response.create(model="routenlp-cs_intent", messages=[{"role": "user", "content": _text(stack, "cs_intent", 4)}], extra_body={"policy": "always-t4"})
    meta = chat.parse().model_extra["routenlp"]
    assert meta["tier"] == "t3" and "t4" in meta["errors"] and chat.headers["x-routenlp-fallback"] == "1"
    metrics = httpx.get(stack.root_url + "/metrics", timeout=10).text
    assert 'routenlp_gateway_tier_state{tier="t4"} 2.0' in metrics
    stack.proxy.set_mode("pass")
    recovered = _wait_for_state(stack, "t4", "serving", 3 * BREAKER_RESET_S)
    print(f"\n[health] T4 down shown after {shown:.1f} s, recovery after {recovered:.1f} s (breaker cool-down {BREAKER_RESET_S} s)")
    assert shown <= BREAKER_RESET_S
    assert recovered <= BREAKER_RESET_S + 2.0  # the cool-down plus one probe interval (4/3 s) and polling
    _wait_for_state(stack, "t3", "serving", 1)


_TEXT = st.one_of(st.text(max_size=80), st.just(""), st.just("x" * (32 * 1024 + 3)), st.integers(), st.none())
_MODEL = st.one_of(st.sampled_from([f"routenlp-{t}" for t in TASK_NAMES] + ["routenlp", "gpt-4o", "", "routenlp-"]), st.text(max_size=12))
_ROUTING = st.one_of(st.none(), st.sampled_from(["t1", "t2", "t9", "", "always-t1", "routenlp", "cs_intent"]), st.text(max_size=6))


@st.composite
def bodies(draw):
    """(path, body): chat or completion bodies, 40% well-formed (a real text for a real task, to be
    answered), the rest twisted."""
    chat = draw(st.booleans())
    if draw(st.integers(0, 9)) < 4:
        task = draw(st.sampled_from(TASK_NAMES))
        text = draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=80).filter(str.strip))
        body = {"model": f"routenlp-{task}", "stream": draw(st.booleans())}
        body.update({"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text})
        return ("/chat/completions" if chat else "/completions"), body
    text = draw(_TEXT)
    body = {"model": draw(_MODEL)}
    if chat:
        role = draw(st.sampled_from(["user"] * 4 + ["system", "assistant", 3]))
        content = draw(st.one_of(st.just(text), st.just([{"type": "text", "text": text}]), st.just([{"type": "image_url"}])))
        body["messages"] = draw(st.sampled_from([[{"role": role, "content": content}], [], "hello"]))
    else:
        body["prompt"] = draw(st.sampled_from([text, [text], [text, text], {"p": 1}]))
    for field in ("task", "max_tier", "policy"):
        value = draw(_ROUTING)
        if value is not None:
            body[field] = value
    if draw(st.integers(0, 4)) == 0:
        body["stream"] = True
    if draw(st.integers(0, 6)) == 0:
        body.pop("model")
    return ("/chat/completions" if chat else "/completions"), body


def test_fuzzed_bodies_get_an_answer_or_an_openai_error_never_a_500(stack):
    http = httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {KEYS['main']}"}, timeout=120)
    outcomes: dict[int, int] = {}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    @given(bodies())
    def case(request):
        path, body = request
        response = http.post(path, json=body)
        outcomes[response.status_code] = outcomes.get(response.status_code, 0) + 1
        assert response.status_code in (200, 400, 404), (body, response.status_code, response.text[:300])
        if response.status_code != 200:
            error = response.json()["error"]
            assert error["message"] and error["type"] == "invalid_request_error"
        elif body.get("stream"):
            assert response.text.rstrip().endswith("data: [DONE]")
        else:
            assert response.json()["routenlp"]["tier"] in ("t1", "t2", "t3", "t4")

    case()
    http.close()
    print(f"\n[fuzz] gateway: {FUZZ_EXAMPLES} bodies, by status: {dict(sorted(outcomes.items()))}")
    assert outcomes.get(200) and outcomes.get(400)


def test_triton_down_gives_503_and_not_ready(stack):
    stack.deployment.server.stop()
    with pytest.raises(openai.InternalServerError) as caught:
        stack.client().chat.completions.create(model="routenlp-cs_intent", messages=[{"role": "user", "content": "my card has not arrived"}])
    assert caught.value.status_code == 503 and caught.value.body["type"] == "service_unavailable"
    assert httpx.get(stack.root_url + "/health/ready", timeout=10).status_code == 503
    for tier in ("router", "t1", "t2", "t3"):  # every Triton tier fails its readiness probe
        _wait_for_state(stack, tier, "open", 2 * BREAKER_RESET_S)
