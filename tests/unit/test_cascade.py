import math

import pytest

from bls_router.cascade import CascadePolicy, TierResult, TierUnavailable, run_cascade
from bls_router.conformal import conformal_delta, violation_rate

PRICES = {"t1": 0.01, "t2": 0.10, "t3": 0.80, "t4": 8.00}
POLICY = CascadePolicy(
    thresholds={"cs_intent": {"t1": 0.2, "t2": 0.3, "t3": 0.3}, "fin_summary": {"t2": 0.4, "t3": 0.4}},
    prices=PRICES,
    structured_tasks=frozenset({"cs_intent"}),
)


def tiers(u: dict, down: set = frozenset()):
    calls = []

    def call(tier):
        calls.append(tier)
        if tier in down:
            raise TierUnavailable(f"{tier} is down")
        return TierResult(output=f"answer-{tier}", u=u[tier], tokens=100)

    return call, calls


def test_confident_router_choice_is_accepted_without_escalation():
    call, calls = tiers({"t1": 0.1})
    out = run_cascade("cs_intent", "t1", call, POLICY)
    assert (out.tier, out.output, calls, out.escalations, out.fallback) == ("t1", "answer-t1", ["t1"], 0, None)
    assert out.cost == pytest.approx(100 / 1000 * 0.01)


def test_uncertain_answers_escalate_and_costs_accumulate():
    call, calls = tiers({"t1": 0.5, "t2": 0.6, "t3": 0.1})
    out = run_cascade("cs_intent", "t1", call, POLICY)
    assert calls == ["t1", "t2", "t3"] and out.tier == "t3" and out.escalations == 2
    assert out.cost == pytest.approx(0.1 * (0.01 + 0.10 + 0.80))
    meta = out.metadata()
    assert meta["path"] == ["t1", "t2", "t3"] and meta["u"] == {"t1": 0.5, "t2": 0.6, "t3": 0.1}


def test_t4_answer_is_final_whatever_its_uncertainty():
    call, calls = tiers({"t2": 0.9, "t3": 0.9, "t4": 0.99})
    out = run_cascade("fin_summary", "t2", call, POLICY)
    assert calls == ["t2", "t3", "t4"] and out.tier == "t4" and out.fallback is None


def test_max_tier_caps_the_cascade():
    call, calls = tiers({"t2": 0.9, "t3": 0.9})
    out = run_cascade("fin_summary", "t2", call, POLICY, max_tier="t3")
    assert calls == ["t2", "t3"] and out.tier == "t3"


def test_generation_tasks_never_go_to_t1():
    call, calls = tiers({"t2": 0.1})
    out = run_cascade("fin_summary", "t1", call, POLICY)
    assert calls == ["t2"] and out.tier == "t2"


def test_t4_down_accepts_t3_answer_with_relaxed_threshold():
    call, calls = tiers({"t2": 0.9, "t3": 0.9}, down={"t4"})
    out = run_cascade("fin_summary", "t2", call, POLICY)
    assert calls == ["t2", "t3", "t4"] and out.tier == "t3" and out.output == "answer-t3"
    assert "t4 unavailable" in out.fallback and out.metadata()["errors"] == {"t4": "t4 is down"}


def test_router_picks_t4_while_t4_is_down_goes_to_t3_ceiling():
    call, calls = tiers({"t3": 0.9}, down={"t4"})
    out = run_cascade("fin_summary", "t4", call, POLICY)
    assert calls == ["t4", "t3"] and out.tier == "t3" and "t3 ceiling" in out.fallback


def test_mid_tiers_down_structured_task_goes_to_t1():
    call, calls = tiers({"t1": 0.9}, down={"t2", "t3"})
    out = run_cascade("cs_intent", "t2", call, POLICY)
    assert calls == ["t2", "t1"] and out.tier == "t1" and "structured task to t1" in out.fallback


def test_mid_tiers_down_generation_task_goes_to_t4():
    call, calls = tiers({"t4": 0.2}, down={"t2", "t3"})
    out = run_cascade("fin_summary", "t2", call, POLICY)
    assert calls == ["t2", "t4"] and out.tier == "t4" and "generation task to t4" in out.fallback


def test_everything_down_raises_with_every_cause():
    call, _ = tiers({}, down={"t1", "t2", "t3", "t4"})
    with pytest.raises(TierUnavailable, match="t2: t2 is down.*t4: t4 is down"):
        run_cascade("fin_summary", "t2", call, POLICY)


def test_conformal_delta_is_the_ranked_correct_uncertainty():
    # 20 correct examples with u = 0.00, 0.05, ..., 0.95 and two wrong ones.
    us = [i / 20 for i in range(20)] + [0.01, 0.99]
    ok = [True] * 20 + [False, False]
    threshold = conformal_delta(us, ok, alpha=0.05)
    # rank = ceil(0.95 * 21) = 20 -> the 20th smallest correct u = 0.95
    assert threshold.delta == pytest.approx(0.95) and threshold.n_correct == 20 and threshold.n == 22
    # alpha 0.5: rank = ceil(0.5 * 21) = 11 -> 0.50
    assert conformal_delta(us, ok, alpha=0.5).delta == pytest.approx(0.50)


def test_conformal_delta_edge_cases():
    assert conformal_delta([0.3, 0.4], [False, False]).delta == -math.inf  # never trust
    assert conformal_delta([0.3, 0.4], [True, True]).delta == 0.4  # rank beyond n: largest correct
    with pytest.raises(ValueError):
        conformal_delta([0.1], [True, False])


def test_violation_rate_counts_accepted_wrong_answers():
    rate, (lo, hi), n = violation_rate([0.1, 0.2, 0.9, 0.1], [True, False, False, False], delta=0.5)
    # wrong and accepted: u=0.2 and u=0.1 -> 2 of 4
    assert (rate, n) == (0.5, 4) and lo < 0.5 < hi


LADDER = CascadePolicy(
    thresholds={"cs_intent": {"t1": 0.2, "t2": 0.3, "t3": 0.3}, "fin_summary": {"t2": 0.4, "t3": 0.4}},
    prices=PRICES,
    structured_tasks=frozenset({"cs_intent"}),
    # cs_intent: T1 is the best tier (nothing to escalate to); T2 skips T3, which is worse on the task
    escalate_to={"cs_intent": {"t1": None, "t2": "t4", "t3": "t4"}, "fin_summary": {"t2": "t3", "t3": "t4"}},
)


def test_an_uncertain_answer_is_accepted_when_no_pricier_tier_is_better_on_the_task():
    call, calls = tiers({"t1": 0.9})
    out = run_cascade("cs_intent", "t1", call, LADDER)
    assert calls == ["t1"] and out.tier == "t1" and out.escalations == 0


def test_escalation_skips_tiers_that_are_worse_on_the_task():
    call, calls = tiers({"t2": 0.9, "t4": 0.1})
    out = run_cascade("cs_intent", "t2", call, LADDER)
    assert calls == ["t2", "t4"] and out.tier == "t4" and out.escalations == 1


def test_an_escalation_target_above_max_tier_accepts_the_answer_in_hand():
    call, calls = tiers({"t2": 0.9})
    out = run_cascade("cs_intent", "t2", call, LADDER, max_tier="t3")
    assert calls == ["t2"] and out.tier == "t2"


def test_without_a_ladder_entry_the_next_tier_up_is_the_target():
    assert LADDER.next_tier("fin_ner", "t1", ["t2", "t3", "t4"]) == "t2"
    assert LADDER.next_tier("fin_summary", "t2", ["t3", "t4"]) == "t3"
    assert LADDER.next_tier("fin_summary", "t2", ["t4"]) == "t4"  # T3 already failed: the first past it
    assert LADDER.next_tier("cs_intent", "t1", ["t2", "t3", "t4"]) is None
