"""RoutingService and TierCodec without Triton: validation, the router's pick, OUTPUT/METADATA,
costs, fallbacks, and the tensor <-> text layer over fake tensor backends and a real tokenizer."""

from __future__ import annotations

import json
import math
import string
import threading
from dataclasses import replace

import numpy as np
import pytest

from bls_router.service import (
    Generation,
    RequestError,
    RoutingService,
    TierCodec,
    cheapest_confident_tier,
    decide_route,
    format_output,
    router_probabilities,
    token_logprobs_from_vllm_json,
)
from routenlp_core.cascade import TierResult, TierUnavailable
from routenlp_core.serving_config import (
    ENV_T4_BASE_URL,
    ServingConfig,
    ServingConfigError,
    T1Head,
    T4Settings,
    load_serving_config,
    write_serving_config,
)
from routenlp_core.serving_config import (
    validate as validate_config,
)

TASKS = ("cs_intent", "cs_response", "fin_ner", "fin_summary", "legal_clause", "legal_risk")
STRUCTURED = ("cs_intent", "fin_ner", "legal_clause", "legal_risk")
PRICES = {"t1": 0.01, "t2": 0.10, "t3": 0.80, "t4": 8.00}
RISK_LABELS = ("none", "fair", "potentially_unfair", "clearly_unfair")
NER_LABELS = ("O", "I-PER", "I-LOC", "I-ORG", "I-MISC")


def make_config(**overrides) -> ServingConfig:
    fields = dict(
        repository_version=3,
        portfolio="default",
        profile="unit",
        target="cpu",
        tasks=TASKS,
        structured_tasks=STRUCTURED,
        task_ids={task: i for i, task in enumerate(TASKS)},
        router_tiers=("t1", "t2", "t3", "t4"),
        router_max_len=32,
        t1={
            "cs_intent": T1Head(("card_arrival", "lost_or_stolen_card"), 32, False),
            "fin_ner": T1Head(NER_LABELS, 32, True),
            "legal_clause": T1Head(("none", "insurance"), 32, False),
            "legal_risk": T1Head(RISK_LABELS, 32, False),
        },
        thresholds={task: {"t1": 0.3, "t2": 0.3, "t3": 0.3} for task in TASKS},
        prices=PRICES,
        bars={task: 0.5 for task in TASKS},
        latency_sla_ms={task: 500.0 for task in TASKS},
        max_input_tokens=24,
        max_answer_tokens=8,
        max_text_bytes=200,
        t4=T4Settings("", "t4", "ROUTENLP_T4_API_KEY", 5.0, 1),
    )
    fields.update(overrides)
    return ServingConfig(**fields)


class FakeTiers:
    """Text-level tiers: fixed u per tier, optional down tiers, 100 tokens per call."""

    def __init__(self, u=None, down=(), outputs=None, logits=(0.0, 0.0, 0.0, 0.0), router_down=False):
        self.u = {"t1": 0.1, "t2": 0.1, "t3": 0.1, "t4": 0.1, **(u or {})}
        self.down = set(down)
        self.outputs = outputs or {}
        self.logits = list(logits)
        self.router_down = router_down
        self.calls: list[str] = []
        self.routers_called: list[str] = []
        self.ablation_logits = [-5.0, -5.0, -5.0, 5.0]  # a router ablation that always picks T4

    def router(self, text, task, model="router"):
        self.routers_called.append(model)
        if self.router_down:
            raise TierUnavailable("router: model not ready")
        return self.ablation_logits if model != "router" else self.logits

    def tier(self, tier, task, text):
        self.calls.append(tier)
        if tier in self.down:
            raise TierUnavailable(f"{tier}: connection refused")
        return TierResult(output=self.outputs.get(tier, f"answer from {tier}"), u=self.u[tier], tokens=100)


def service(fake: FakeTiers, config: ServingConfig | None = None, **kwargs) -> RoutingService:
    return RoutingService(config or make_config(), fake.router, fake.tier, bls_version=4, **kwargs)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "text, task, max_tier, message",
    [
        (b"", b"cs_intent", None, "TEXT is empty"),
        (b"   \n\t", b"cs_intent", None, "TEXT is empty"),
        (None, b"cs_intent", None, "TEXT is required"),
        (b"hello", b"cs_intnt", None, "unknown TASK 'cs_intnt'; valid tasks: cs_intent, cs_response, fin_ner"),
        (b"hello", b"", None, "TASK is empty; valid tasks"),
        (b"hello", None, None, "TASK is required"),
        (b"x" * 201, b"cs_intent", None, "TEXT is 201 bytes; the limit is 200 bytes"),
        ("é" * 101, b"cs_intent", None, "TEXT is 202 bytes; the limit is 200 bytes"),
        (b"caf\xe9 latte", b"cs_intent", None, "TEXT is not valid UTF-8 (byte 0xe9 at offset 3)"),
        (b"hello", b"\xff", None, "TASK is not valid UTF-8"),
        (b"hello", b"cs_intent", b"t5", "MAX_TIER must be one of t1, t2, t3, t4; got 't5'"),
        (b"hello", b"cs_intent", b"\xfe", "MAX_TIER is not valid UTF-8"),
        (b"hello", b"fin_summary", b"t1", "MAX_TIER t1 leaves no tier for fin_summary: generation tasks are served by t2-t4"),
    ],
)
def test_bad_requests_raise_a_clear_request_error(text, task, max_tier, message):
    with pytest.raises(RequestError) as caught:
        service(FakeTiers()).parse(text, task, max_tier)
    assert message in str(caught.value)


def test_parse_normalises_and_fills_defaults():
    svc = service(FakeTiers())
    request = svc.parse(b"my card is late", b" cs_intent ", b" T3 ")
    assert (request.task, request.max_tier, request.text_bytes) == ("cs_intent", "t3", 15)
    assert len(request.request_id) == 32  # generated uuid4 hex
    assert svc.parse("text", "cs_intent", b"", b"req-7").request_id == "req-7"
    assert svc.parse("text", "cs_intent").max_tier == "t4"
    with pytest.raises(RequestError, match="REQUEST_ID must be at most 128 printable"):
        svc.parse("text", "cs_intent", None, "r" * 129)


def test_text_at_the_byte_limit_is_accepted():
    assert service(FakeTiers()).parse(b"x" * 200, b"cs_intent").text_bytes == 200


# ---------------------------------------------------------------- the router's pick


def test_cheapest_tier_predicted_to_pass_at_gamma():
    p = {"t1": 0.30, "t2": 0.55, "t3": 0.80, "t4": 0.95}
    assert cheapest_confident_tier(p, ["t1", "t2", "t3", "t4"], 0.5) == "t2"
    assert cheapest_confident_tier(p, ["t1", "t2", "t3", "t4"], 0.7) == "t3"  # a stricter gamma pays more
    assert cheapest_confident_tier(p, ["t1", "t2", "t3", "t4"], 0.2) == "t1"
    assert cheapest_confident_tier(p, ["t2", "t3"], 0.9) == "t3"  # none reaches gamma: the likeliest
    assert cheapest_confident_tier({"t1": 0.1, "t2": 0.4, "t3": 0.4, "t4": 0.1}, ["t1", "t2", "t3", "t4"], 0.9) == "t2"
    with pytest.raises(ValueError, match="no allowed tier"):
        cheapest_confident_tier(p, [], 0.5)


def test_router_probabilities_are_one_sigmoid_per_tier_in_the_routers_order():
    p = router_probabilities([0.0, math.log(3.0), -math.log(3.0), 0.0], ("t4", "t3", "t2", "t1"))
    assert p == pytest.approx({"t4": 0.5, "t3": 0.75, "t2": 0.25, "t1": 0.5})
    with pytest.raises(ValueError, match="3 logits for 4 tiers"):
        router_probabilities([1.0, 2.0, 3.0], ("t1", "t2", "t3", "t4"))


def utility_calibration(lam: float = 0.5, **extra) -> dict:
    """A calibrated config's utility: q_hat(T1) = T1's confidence, q_hat(T2..T4) = 0.2/0.5/0.9 plus
    the router's T3 probability for T3; prices in cost-ratio units."""
    zero = [0.0] * 5
    by_tier = {"t1": [0.0, *zero[:4], 1.0], "t2": [0.2, *zero], "t3": [0.5, 0.0, 0.0, 0.3, 0.0, 0.0], "t4": [0.9, *zero]}
    price = {"t1": 0.001, "t2": 0.01, "t3": 0.1, "t4": 1.0}
    weights = {task: {t: list(w) for t, w in by_tier.items() if task in STRUCTURED or t != "t1"} for task in TASKS}
    utility = {"lambda": lam, "weights": weights, "price": {task: {t: price[t] for t in weights[task]} for task in TASKS}}
    return {"utility": utility, "cascade_first": list(STRUCTURED), **extra}


def test_the_utility_picks_the_tier_and_the_cascade_escalates_once():
    config = make_config(calibration=utility_calibration(escalate_to={"legal_risk": {"t1": "t4", "t2": "t3", "t3": "t4"}}))
    policy, rule = config.policy(), config.utility()
    p = {"t1": 0.5, "t2": 0.5, "t3": 0.5, "t4": 0.5}
    # T1 sure (u 0.1): q_hat 0.9 - 0.0005 beats T4's 0.9 - 0.5; T1 is picked and may escalate to T4 only
    sure = decide_route("legal_risk", p, ["t1", "t2", "t3", "t4"], policy, rule, t1_u=0.1)
    assert sure.start == "t1" and sure.chosen == "t1" and sure.policy.escalate_to["legal_risk"] == {"t1": "t4", "t4": None}
    # T1 unsure (u 0.8): T3 (0.5 + 0.3 x 0.5 - 0.05 = 0.6) wins; T1's answer is dropped, T3 escalates once to T4
    unsure = decide_route("legal_risk", p, ["t1", "t2", "t3", "t4"], policy, rule, t1_u=0.8)
    assert unsure.start == "t1" and unsure.chosen == "t3"
    assert unsure.policy.delta("legal_risk", "t1") == -math.inf and unsure.policy.escalate_to["legal_risk"] == {"t1": "t3", "t3": "t4", "t4": None}
    assert policy.delta("legal_risk", "t1") == 0.3 and policy.escalate_to["legal_risk"]["t3"] == "t4"  # the base is untouched
    # MAX_TIER t2: the pick is among the allowed tiers only; a generation task has no T1 answer
    assert decide_route("legal_risk", p, ["t1", "t2"], policy, rule, t1_u=0.9).chosen == "t2"
    assert decide_route("cs_response", p, ["t2", "t3", "t4"], policy, rule).start == "t3"
    # a price-blind lambda picks the best predicted tier, an infinite one the cheapest
    assert decide_route("cs_response", p, ["t2", "t3", "t4"], policy, replace(rule, lam=0.0)).start == "t4"
    assert decide_route("cs_response", p, ["t2", "t3", "t4"], policy, replace(rule, lam=math.inf)).start == "t2"
    # the router down: the cheapest allowed tier; no utility (uncalibrated): the router's pick at gamma 0.5
    assert decide_route("legal_risk", None, ["t2", "t3"], policy, rule).start == "t2"
    assert decide_route("legal_risk", {**p, "t2": 0.6}, ["t2", "t3", "t4"], policy, None).start == "t2"


def test_service_routes_structured_tasks_through_t1_and_its_confidence():
    config = make_config(calibration=utility_calibration(escalate_to={"legal_risk": {"t1": "t4", "t3": "t4"}}))
    # T1 unsure (u 0.8): the utility picks T3 (the router's T3 probability 0.88 adds 0.26)
    fake = FakeTiers(u={"t1": 0.8, "t3": 0.1}, logits=(2.0, -2.0, 2.0, 2.0))
    result = RoutingService(config, fake.router, fake.tier).handle(b"is this clause fair", b"legal_risk")
    assert fake.calls == ["t1", "t3"] and result.metadata["tier"] == "t3" and result.metadata["path"] == ["t1", "t3"]
    assert result.metadata["router"]["lambda"] == 0.5 and result.metadata["router"]["tier"] == "t3"
    assert result.record["thresholds"]["t1"] is None  # T1's answer was not the pick: never accepted
    confident = FakeTiers(u={"t1": 0.05}, logits=(2.0, -2.0, 2.0, 2.0))
    assert RoutingService(config, confident.router, confident.tier).handle(b"is this clause fair", b"legal_risk").metadata["tier"] == "t1"
    # T1 down: the pick among the tiers above it; the failure is a counted fallback, not lost
    down = FakeTiers(down={"t1"}, logits=(2.0, -2.0, 2.0, 2.0))
    result = RoutingService(config, down.router, down.tier).handle(b"is this clause fair", b"legal_risk")
    assert result.metadata["tier"] == "t3" and "t1 unavailable" in result.metadata["fallback"]
    assert result.counters()["fallbacks"] == [("legal_risk", "t1", 1.0)]
    with pytest.raises(ServingConfigError, match="cascade_first names 'cs_response'"):
        validate_config(make_config(calibration={"cascade_first": ["cs_response"]}))
    broken = utility_calibration()
    broken["utility"]["weights"]["fin_ner"]["t2"] = [0.1, 0.2]
    with pytest.raises(ServingConfigError, match=r"calibration.utility: weights.fin_ner.t2: a tier of t1, t2, t3, t4 with 6 finite numbers"):
        validate_config(make_config(calibration=broken))
    missing = utility_calibration()
    del missing["utility"]["weights"]["cs_response"]
    with pytest.raises(ServingConfigError, match="calibration.utility has no weights for task 'cs_response'"):
        validate_config(make_config(calibration=missing))


def test_generation_task_never_starts_at_t1_even_if_the_router_says_so():
    fake = FakeTiers(logits=(9.0, -1.0, 2.0, 0.0))
    result = service(fake).handle(b"summarise this call", b"fin_summary")
    assert result.metadata["start_tier"] == "t3" and fake.calls == ["t3"]
    assert result.metadata["router"]["tier"] == "t3"
    assert result.metadata["router"]["p"]["t1"] > 0.99  # probabilities over all four router outputs


def test_max_tier_caps_the_router_pick_and_the_cascade():
    fake = FakeTiers(logits=(-5.0, -5.0, 1.0, 9.0), u={"t2": 0.9, "t3": 0.9})
    result = service(fake).handle(b"summarise", b"fin_summary", b"t3")
    assert result.metadata["start_tier"] == "t3" and fake.calls == ["t3"]
    assert result.metadata["tier"] == "t3" and "t4" not in result.metadata["path"]
    fake = FakeTiers(logits=(-5.0, 9.0, -5.0, -5.0), u={"t1": 0.9, "t2": 0.9})
    result = service(fake).handle(b"my card", b"cs_intent", b"t2")
    assert fake.calls == ["t2"] and result.metadata["path"] == ["t2"] and result.metadata["escalations"] == 0


def test_router_down_starts_at_the_cheapest_servable_tier_and_says_so():
    fake = FakeTiers(router_down=True)
    result = service(fake).handle(b"my card", b"legal_risk")
    assert fake.calls == ["t1"] and result.metadata["start_tier"] == "t1"
    assert result.metadata["router"] == {"tier": None, "error": "router: model not ready"}
    assert result.metadata["fallback"].startswith("router unavailable: started at t1")


# ---------------------------------------------------------------- OUTPUT, METADATA, costs


def test_output_and_metadata_shape_for_a_classification_task():
    fake = FakeTiers(logits=(5.0, 0.0, 0.0, 0.0), outputs={"t1": "fair"})
    result = service(fake).handle(b"You may cancel at any time.", b"legal_risk", None, b"abc-1")
    assert json.loads(result.output) == {"label": "fair"}
    meta = json.loads(result.metadata_json())
    assert meta["request_id"] == "abc-1" and meta["task"] == "legal_risk"
    assert (meta["tier"], meta["path"], meta["start_tier"], meta["max_tier"]) == ("t1", ["t1"], "t1", "t4")
    assert meta["u"] == {"t1": 0.1} and meta["escalations"] == 0 and meta["fallback"] is None
    assert meta["cost_usd"] == pytest.approx(100 / 1000 * PRICES["t1"])
    assert set(meta["latency_ms"]) == {"router", "t1"} and meta["total_ms"] >= meta["latency_ms"]["t1"]
    assert meta["repository_version"] == 3 and meta["bls_version"] == "4"
    assert meta["sla_ms"] == 500.0 and meta["sla_met"] is True
    assert meta["overhead_ms"] >= 0 and meta["errors"] == {}


def test_ner_output_has_entities_and_one_tag_per_word():
    tags = ["I-ORG", "I-ORG", "O", "O", "I-LOC"]
    fake = FakeTiers(logits=(5.0, 0, 0, 0), outputs={"t1": tags})
    result = service(fake).handle("Acme Corp opened in  Paris", "fin_ner")
    assert json.loads(result.output) == {
        "entities": [
            {"type": "ORG", "text": "Acme Corp", "start": 0, "end": 2},
            {"type": "LOC", "text": "Paris", "start": 4, "end": 5},
        ],
        "tags": tags,
    }


def test_generation_output_is_the_text():
    fake = FakeTiers(logits=(0, 5.0, 0, 0), outputs={"t2": "Revenue grew 5%."})
    assert service(fake).handle("call transcript", "fin_summary").output == "Revenue grew 5%."


def test_escalation_costs_add_up_and_counters_match():
    fake = FakeTiers(logits=(5.0, 0, 0, 0), u={"t1": 0.9, "t2": 0.8, "t3": 0.1})
    result = service(fake).handle(b"my card", b"cs_intent")
    meta = result.metadata
    assert meta["path"] == ["t1", "t2", "t3"] and meta["tier"] == "t3" and meta["escalations"] == 2
    assert meta["cost_usd"] == pytest.approx(0.1 * (0.01 + 0.10 + 0.80))
    assert set(meta["latency_ms"]) == {"router", "t1", "t2", "t3"}
    counters = result.counters()
    assert counters["requests"] == [("cs_intent", "t3", 1.0)]
    assert counters["escalations"] == [("cs_intent", "t1", 1.0), ("cs_intent", "t2", 1.0)]
    assert sum(amount for _, _, amount in counters["dollars"]) == pytest.approx(meta["cost_usd"])
    assert counters["fallbacks"] == []


def test_never_trusted_tier_always_escalates():
    config = make_config(thresholds={"cs_intent": {"t1": -math.inf}})
    fake = FakeTiers(logits=(5.0, 0, 0, 0), u={"t1": 0.0})
    result = service(fake, config).handle(b"my card", b"cs_intent")
    assert result.metadata["path"] == ["t1", "t2"]


def test_t4_down_falls_back_to_t3_and_the_fallback_is_visible():
    fake = FakeTiers(logits=(-5.0, -5.0, -5.0, 5.0), down={"t4"})
    result = service(fake).handle(b"summarise", b"fin_summary")
    meta = result.metadata
    assert meta["tier"] == "t3" and meta["path"] == ["t4", "t3"]
    assert "t4 unavailable" in meta["fallback"] and meta["errors"] == {"t4": "t4: connection refused"}
    assert result.counters()["fallbacks"] == [("fin_summary", "t4", 1.0)]
    assert result.output == "answer from t3"


def test_no_tier_left_raises_tier_unavailable():
    fake = FakeTiers(logits=(0, 5.0, 0, 0), down={"t2", "t3", "t4"})
    with pytest.raises(TierUnavailable, match="no tier could answer fin_summary"):
        service(fake).handle(b"summarise", b"fin_summary")


def test_sink_gets_a_log_record_and_a_failing_sink_does_not_fail_the_request():
    records = []
    fake = FakeTiers(logits=(5.0, 0, 0, 0), u={"t1": 0.9})
    result = service(fake, sink=records.append).handle(b"my card", b"cs_intent", None, b"r1")
    (record,) = records
    assert record is result.record
    assert record["request_id"] == "r1" and record["path"] == ["t1", "t2"] and record["escalations"] == 1
    assert record["thresholds"] == {"t1": 0.3, "t2": 0.3} and record["text"] == "my card"
    json.dumps(record)  # JSON-able as is, for an append-only log

    def broken(record):
        raise OSError("disk full")

    assert service(FakeTiers(), sink=broken).handle(b"my card", b"cs_intent").output


def test_fixed_tier_policy_skips_the_router_and_never_escalates():
    fake = FakeTiers(logits=(5.0, 0, 0, 0), u={"t2": 0.99})
    result = service(fake).handle(b"my card", b"cs_intent", None, None, b" Always-T2 ")
    meta = result.metadata
    assert meta["policy"] == "always-t2" and meta["path"] == ["t2"] and meta["escalations"] == 0
    assert meta["router"] == {"tier": None, "skipped": "policy always-t2"} and result.record["policy"] == "always-t2"
    assert fake.calls == ["t2"]
    # the same fallbacks as routed requests: Always-T4 with T4 down is answered by T3, visibly
    down = service(FakeTiers(down={"t4"})).handle(b"summarise", b"fin_summary", None, None, b"always-t4")
    assert down.metadata["path"] == ["t4", "t3"] and "t4 unavailable" in down.metadata["fallback"]
    assert service(FakeTiers()).handle(b"x", b"cs_intent").metadata["policy"] == "routenlp"


def test_cascade_ablations_use_the_router_with_no_or_one_fixed_threshold():
    fake = FakeTiers(logits=(5.0, 0, 0, 0), u={"t1": 0.9, "t2": 0.25, "t3": 0.1})
    routed = service(fake).handle(b"my card", b"cs_intent")  # conformal thresholds 0.3 in make_config
    assert routed.metadata["path"] == ["t1", "t2"]
    no_cascade = service(FakeTiers(logits=(5.0, 0, 0, 0), u={"t1": 0.9})).handle(b"my card", b"cs_intent", None, None, b"routenlp-no-cascade")
    assert no_cascade.metadata["path"] == ["t1"] and no_cascade.metadata["router"]["tier"] == "t1"
    fixed = service(FakeTiers(logits=(5.0, 0, 0, 0), u={"t1": 0.35, "t2": 0.29})).handle(b"my card", b"cs_intent", None, None, b"routenlp-fixed-threshold")
    assert fixed.metadata["path"] == ["t1", "t2"] and fixed.record["thresholds"] == {"t1": 0.3, "t2": 0.3}


def test_router_ablation_policies_call_their_own_router_model_then_the_conformal_cascade():
    fake = FakeTiers(logits=(5.0, 0, 0, 0), u={"t1": 0.1, "t4": 0.5})
    config = make_config(router_models=("router_no_cost", "router_no_quality"))
    no_cost = service(fake, config).handle(b"my card", b"cs_intent", None, None, b"routenlp-router-no-cost")
    assert fake.routers_called == ["router_no_cost"] and no_cost.metadata["router"]["tier"] == "t4" and no_cost.metadata["path"] == ["t4"]
    routed = service(fake, config).handle(b"my card", b"cs_intent")
    assert fake.routers_called[-1] == "router" and routed.metadata["path"] == ["t1"]
    with pytest.raises(RequestError, match="needs the router_no_quality model, which repository version 3 does not have"):
        service(FakeTiers()).parse(b"hello", b"cs_intent", None, None, b"routenlp-router-no-quality")


@pytest.mark.parametrize(
    "task, max_tier, policy, message",
    [
        (b"cs_intent", None, b"cheapest", "POLICY must be one of routenlp, routenlp-no-cascade, routenlp-fixed-threshold, routenlp-router-no-cost, routenlp-router-no-quality, always-t1, always-t2, always-t3, always-t4; got 'cheapest'"),
        (b"fin_summary", None, b"always-t1", "POLICY always-t1: t1 does not serve fin_summary"),
        (b"cs_intent", b"t2", b"always-t3", "POLICY always-t3 is above MAX_TIER t2"),
        (b"cs_intent", None, b"\xff", "POLICY is not valid UTF-8"),
    ],
)
def test_bad_policies_are_request_errors(task, max_tier, policy, message):
    with pytest.raises(RequestError) as caught:
        service(FakeTiers()).parse(b"hello", task, max_tier, None, policy)
    assert message in str(caught.value)


def test_format_output_per_task_kind():
    assert format_output("cs_intent", "card_arrival", "x") == '{"label": "card_arrival"}'
    assert json.loads(format_output("fin_ner", ["O"], "word"))["entities"] == []
    assert format_output("cs_response", "Hi!", "x") == "Hi!"


# ---------------------------------------------------------------- TierCodec over tensor fakes


@pytest.fixture(scope="module")
def tokenizer():
    from export.tokenizer import train_tokenizer

    words = "acme corp opened an office in paris my card has not arrived yet task text answer summary revenue".split()
    texts = [" ".join(words[i:] + words[:i]) for i in range(len(words))] + [string.printable]
    return train_tokenizer(texts * 5, vocab_size=300)


class FakeTensors:
    def __init__(self, router=None, t1=None, generations=None, fail=()):
        self.router = router if router is not None else np.array([[0.0, 3.0, 1.0, 0.0]], dtype=np.float32)
        self.t1 = t1
        self.generations = generations or {}
        self.fail = set(fail)
        self.seen: dict[str, object] = {}

    def router_logits(self, inputs, model):
        self.seen["router"] = inputs
        self.seen["router_model"] = model
        if "router" in self.fail:
            raise RuntimeError("router model not ready")
        return self.router

    def t1_logits(self, task, input_ids, attention_mask):
        self.seen["t1"] = (task, input_ids, attention_mask)
        if callable(self.t1):
            return self.t1(input_ids)
        return self.t1

    def generate(self, tier, prompt, max_tokens):
        self.seen[tier] = (prompt, max_tokens)
        if tier in self.fail:
            raise TierUnavailable(f"{tier}: HTTP 503")
        return self.generations[tier]


def test_codec_router_inputs_and_logits(tokenizer):
    backend = FakeTensors()
    codec = TierCodec(make_config(), tokenizer, backend)
    assert codec.router("my card has not arrived", "legal_clause") == [0.0, 3.0, 1.0, 0.0]
    inputs = backend.seen["router"]
    assert inputs["input_ids"].dtype == np.int64 and inputs["input_ids"].shape == inputs["attention_mask"].shape
    assert inputs["input_ids"][0, 0] == tokenizer.bos_token_id
    assert inputs["task_id"].tolist() == [[TASKS.index("legal_clause")]]
    long = codec.router("paris " * 100, "cs_intent")
    assert backend.seen["router"]["input_ids"].shape[1] == 32 and len(long) == 4  # router_max_len
    assert backend.seen["router_model"] == "router"
    codec.router("my card", "cs_intent", "router_no_cost")  # a router ablation's own model
    assert backend.seen["router_model"] == "router_no_cost"


def test_codec_router_failures_become_tier_unavailable(tokenizer):
    with pytest.raises(TierUnavailable, match="router: RuntimeError: router model not ready"):
        TierCodec(make_config(), tokenizer, FakeTensors(fail={"router"})).router("x", "cs_intent")
    with pytest.raises(TierUnavailable, match="expected 4 finite logits"):
        TierCodec(make_config(), tokenizer, FakeTensors(router=np.array([[1.0, np.nan, 0, 0]]))).router("x", "cs_intent")


def test_codec_t1_classification(tokenizer):
    backend = FakeTensors(t1=np.array([[0.0, 0.0, 4.0, 0.0]], dtype=np.float32))
    result = TierCodec(make_config(), tokenizer, backend).tier("t1", "legal_risk", "you waive all rights")
    assert result.output == "potentially_unfair"
    p = math.exp(4) / (math.exp(4) + 3)
    assert result.u == pytest.approx(1 - p, rel=1e-5)
    assert result.tokens == len(tokenizer("you waive all rights")["input_ids"])


def test_codec_t1_ner_tags_one_per_word(tokenizer):
    def logits(input_ids):
        out = np.zeros((1, input_ids.shape[1], len(NER_LABELS)), dtype=np.float32)
        out[..., NER_LABELS.index("I-ORG")] = 5.0  # every piece says ORG
        return out

    result = TierCodec(make_config(), tokenizer, FakeTensors(t1=logits)).tier("t1", "fin_ner", "acme corp opened")
    assert result.output == ["I-ORG", "I-ORG", "I-ORG"] and 0 < result.u < 0.05


def test_codec_t1_wrong_logits_shape_is_a_tier_failure(tokenizer):
    codec = TierCodec(make_config(), tokenizer, FakeTensors(t1=np.zeros((1, 3), dtype=np.float32)))
    with pytest.raises(TierUnavailable, match=r"t1: ValueError: T1 legal_risk: logits shape \[1, 3\], expected \[1, 4\]"):
        codec.tier("t1", "legal_risk", "text")


def test_codec_decoder_prompt_parse_uncertainty_tokens(tokenizer):
    generations = {
        "t2": Generation(" fair", [math.log(0.9), math.log(0.5)], 12, 2),
        "t3": Generation("ORG: acme corp", [math.log(0.8)], 20, 5),
    }
    backend = FakeTensors(generations=generations)
    codec = TierCodec(make_config(), tokenizer, backend)
    result = codec.tier("t2", "legal_risk", "You may cancel")
    assert result.output == "fair" and result.tokens == 14
    assert result.u == pytest.approx(((1 - 0.9) + (1 - 0.5)) / 2)
    assert backend.seen["t2"] == ("task: legal_risk\ntext: You may cancel\nanswer:", 8)
    ner = codec.tier("t3", "fin_ner", "acme corp opened in paris")
    assert ner.output == ["I-ORG", "I-ORG", "O", "O", "O"]


def test_codec_t4_prompt_is_cut_from_the_left_and_failures_propagate(tokenizer):
    backend = FakeTensors(generations={"t4": Generation("ok", [0.0], 24, 1)}, fail=())
    codec = TierCodec(make_config(), tokenizer, backend)
    codec.tier("t4", "fin_summary", "revenue " * 200)
    prompt, _ = backend.seen["t4"]
    assert prompt.endswith("\nanswer:") and len(tokenizer(prompt)["input_ids"]) <= 24 + 2  # max_input_tokens
    short = "task: fin_summary\ntext: short text\nanswer:"
    roomy = make_config(max_input_tokens=len(tokenizer(short)["input_ids"]))
    TierCodec(roomy, tokenizer, backend).tier("t4", "fin_summary", "short text")
    assert backend.seen["t4"][0] == short  # fits: sent unchanged
    with pytest.raises(TierUnavailable, match="t4: HTTP 503"):
        TierCodec(make_config(), tokenizer, FakeTensors(fail={"t4"})).tier("t4", "fin_summary", "x")


def test_vllm_backend_logprobs_json_gives_the_chosen_tokens():
    steps = [{"5": {"logprob": -0.1, "rank": 1}, "7": {"logprob": -2.5, "rank": 2}}, {"9": {"logprob": -0.7, "rank": 1}}]
    assert token_logprobs_from_vllm_json(json.dumps(steps)) == [-0.1, -0.7]
    assert token_logprobs_from_vllm_json(b"null") == []


# ---------------------------------------------------------------- the serving config file


def test_serving_config_round_trips_through_json(tmp_path, monkeypatch):
    config = make_config(thresholds={"cs_intent": {"t1": -math.inf, "t2": 0.25}})
    text = config.dumps()
    assert '"t1": null' in text and "Infinity" not in text
    write_serving_config(config, tmp_path / "serving_config.json")
    loaded = load_serving_config(tmp_path)
    assert loaded == config
    assert loaded.policy().delta("cs_intent", "t1") == -math.inf and loaded.policy().delta("fin_ner", "t1") == math.inf
    ladder = make_config(calibration={"escalate_to": {"cs_intent": {"t1": None, "t2": "t4"}}}).dumps()
    write_serving_config(ServingConfig.from_json(json.loads(ladder)), tmp_path / "serving_config.json")
    policy = load_serving_config(tmp_path).policy()  # the cascade reads calibration's escalation targets
    assert policy.next_tier("cs_intent", "t1", ["t2", "t3", "t4"]) is None and policy.next_tier("cs_intent", "t2", ["t3", "t4"]) == "t4"
    monkeypatch.setenv(ENV_T4_BASE_URL, "http://127.0.0.1:9/v1")
    assert loaded.t4_base_url() == "http://127.0.0.1:9/v1"
    monkeypatch.delenv(ENV_T4_BASE_URL)
    assert loaded.t4_base_url() == ""


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(extra=1), "unknown field(s) extra"),
        (lambda d: d.pop("prices"), "missing field(s) prices"),
        (lambda d: d["t1"].pop("fin_ner"), "structured task 'fin_ner' has no t1 head"),
        (lambda d: d["thresholds"].update(cs_intent={"t9": 0.1}), "thresholds.cs_intent has unknown tier 't9'"),
        (lambda d: d.update(format=0), "format 0 is not 1"),
        (lambda d: d.update(router_tiers=["t1", "t2", "t3"]), "router_tiers"),
        (lambda d: d.update(calibration={"escalate_to": {"cs_intent": {"t3": "t2"}}}), "calibration.escalate_to.cs_intent.t3 = 't2'"),
        (lambda d: d.update(calibration={"escalate_to": {"nope": {"t1": "t2"}}}), "escalate_to names unknown task 'nope'"),
    ],
)
def test_broken_serving_configs_are_refused_with_the_field_named(tmp_path, edit, message):
    data = make_config().to_json()
    edit(data)
    (tmp_path / "serving_config.json").write_text(json.dumps(data))
    with pytest.raises(ServingConfigError, match="serving_config.json") as caught:
        load_serving_config(tmp_path)
    assert message in str(caught.value)


def test_missing_serving_config_says_who_writes_it(tmp_path):
    with pytest.raises(ServingConfigError, match="written by `routenlp export`"):
        load_serving_config(tmp_path)


def test_t4_settings_take_operator_overrides_from_the_environment():
    from routenlp_core.serving_config import ServingConfigError, T4Settings

    base = T4Settings("", "t4", "ROUTENLP_T4_API_KEY")
    tuned = base.with_env_overrides({"ROUTENLP_T4_TIMEOUT_S": "0.5", "ROUTENLP_T4_BREAKER_FAILURES": "2", "ROUTENLP_T4_BREAKER_RESET_S": "3"})
    assert (tuned.timeout_s, tuned.max_retries, tuned.breaker_failures, tuned.breaker_reset_s) == (0.5, 2, 2, 3.0)
    assert base.with_env_overrides({}) == base
    with pytest.raises(ServingConfigError, match="ROUTENLP_T4_MAX_RETRIES='many' is not a int"):
        base.with_env_overrides({"ROUTENLP_T4_MAX_RETRIES": "many"})


def test_token_ids_match_the_tokenizer_and_pad_batch(tokenizer):
    from routenlp_core.encoder_inputs import encode_texts, pad_batch
    from routenlp_core.t1_codec import TokenIds

    token_ids = TokenIds(tokenizer)
    for text in ("my card has not arrived", "acme corp  opened\tan office é€ in paris " * 3, string.printable):
        assert token_ids(text) == tokenizer(text)["input_ids"]
        for max_len in (2, 5, 64):
            expected = pad_batch(encode_texts(tokenizer, [text], max_len), tokenizer.pad_token_id)
            got = token_ids.batch(token_ids(text), max_len)
            assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, expected))
    assert [a.tolist() for a in token_ids.batch([], 8)] == [[[tokenizer.pad_token_id]], [[0]]]


def test_overlap_runs_t1_beside_the_router_and_changes_no_decision():
    from concurrent.futures import ThreadPoolExecutor

    class Overlapping(FakeTiers):
        """The router answers only once T1 has started: a sequential service would wait forever."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.t1_started = threading.Event()

        def router(self, text, task, model="router"):
            assert self.t1_started.wait(5), "T1 did not start while the router call was under way"
            return super().router(text, task, model)

        def tier(self, tier, task, text):
            if tier == "t1":
                self.t1_started.set()
            return super().tier(tier, task, text)

    cases = [("legal_risk", "t1", {"t1": 0.1}), ("legal_risk", "t4", {"t1": 0.9}), ("cs_intent", "t4", {"t1": 0.05})]
    with ThreadPoolExecutor(2) as pool:
        for task, max_tier, u in cases:
            config = make_config(calibration=utility_calibration())
            plain = service(FakeTiers(u=u, logits=(0.0, 3.0, 0.0, 0.0)), config).handle("text", task, max_tier, "r")
            fake = Overlapping(u=u, logits=(0.0, 3.0, 0.0, 0.0))
            overlapped = service(fake, config, overlap=pool).handle("text", task, max_tier, "r")
            for key in ("tier", "path", "u", "escalations", "cost_usd", "router", "start_tier"):
                assert overlapped.metadata[key] == plain.metadata[key], key
            assert fake.calls[0] == "t1" and fake.t1_started.is_set()
    # a generation task never starts at T1: nothing is overlapped, the router goes first
    fake = FakeTiers()
    with ThreadPoolExecutor(1) as pool:
        service(fake, overlap=pool).handle("text", "fin_summary")
    assert fake.routers_called == ["router"] and fake.calls[0] != "t1"
