import math

import numpy as np
import pytest

from routenlp_core.cascade import CascadePolicy, TierResult, TierUnavailable, run_cascade
from routenlp_core.conformal import U_MAX, crc_delta, ltt_delta, min_calibration_size, realised_risk, wsr_p_value

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


def test_crc_delta_is_the_largest_u_whose_bound_stays_under_alpha():
    # 39 answers: u = 0.00 .. 0.38; the ones at u = 0.10, 0.20, 0.30 lose 1 when accepted.
    us = [i / 100 for i in range(39)]
    losses = [1.0 if i in (10, 20, 30) else 0.0 for i in range(39)]
    # alpha 0.05, n + 1 = 40: at most 2 - 1 = 1 loss may be accepted -> accept up to u = 0.19
    threshold = crc_delta(us, losses, alpha=0.05)
    assert threshold.delta == pytest.approx(0.19) and threshold.accepted == 20 and threshold.calibration_risk == pytest.approx(1 / 39)
    # alpha 0.1: up to 3 losses -> everything qualifies, accept any u
    assert crc_delta(us, losses, alpha=0.1).delta == U_MAX
    # fractional losses add up the same way: (0.5 + 0.5 + 1) / 41 <= 0.05 < (0.5 * 3 + 1) / 41
    assert crc_delta([0.1, 0.2, 0.3] + [0.5] * 37, [0.5, 0.5, 0.5] + [0.0] * 37, alpha=0.05).delta == pytest.approx(0.2)


def test_crc_delta_edge_cases():
    # too few answers to certify anything at alpha 0.05 (n < 19): always escalate
    assert min_calibration_size(0.05) == 19
    assert crc_delta([0.1] * 18, [0.0] * 18, alpha=0.05).delta == -math.inf
    assert crc_delta([0.1] * 19, [0.0] * 19, alpha=0.05).delta == U_MAX
    # the most certain answer already loses: nothing can be accepted
    assert crc_delta([0.0] + [0.5] * 30, [1.0] + [0.0] * 30, alpha=0.05).delta == -math.inf
    # ties are accepted or escalated together: a lossy answer at the tied u blocks the group
    assert crc_delta([0.1] * 10 + [0.2] * 30, [0.0] * 10 + [1.0] + [0.0] * 29, alpha=0.03).delta == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same length"):
        crc_delta([0.1], [0.0, 1.0], 0.05)
    with pytest.raises(ValueError, match=r"\[0, 1.0\]"):
        crc_delta([0.1], [2.0], 0.05)


def test_crc_delta_is_monotone_in_alpha_and_in_the_losses():
    rng = np.random.default_rng(3)
    us = rng.random(200)
    losses = (rng.random(200) < us).astype(float)  # uncertain answers lose more often
    deltas = [crc_delta(us, losses, alpha).delta for alpha in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert deltas == sorted(deltas) and deltas[0] < deltas[-1]
    more = np.maximum(losses, (rng.random(200) < 0.3).astype(float))  # extra losses: never a larger delta
    for alpha in (0.05, 0.1, 0.2):
        assert crc_delta(us, more, alpha).delta <= crc_delta(us, losses, alpha).delta


@pytest.mark.parametrize("alpha, loss_kind", [(0.05, "binary"), (0.1, "binary"), (0.1, "graded")])
def test_crc_realised_risk_holds_over_random_splits_of_exchangeable_data(alpha, loss_kind):
    """Data with a known error structure (loss more likely, and larger, at high u), split at random
    into 100 calibration and 400 test answers 400 times: the test risk at the calibrated delta
    averages <= alpha (CRC's guarantee is in expectation over splits), and the rule is not
    vacuous (it accepts a real share of answers)."""
    rng = np.random.default_rng(11)
    n_cal, n_test, splits = 100, 400, 400
    risks, accepted = [], []
    for _ in range(splits):
        u = rng.beta(2, 2, n_cal + n_test)
        wrong = rng.random(n_cal + n_test) < 0.05 + 0.6 * u**2
        loss = wrong.astype(float) if loss_kind == "binary" else wrong * rng.random(n_cal + n_test)
        delta = crc_delta(u[:n_cal], loss[:n_cal], alpha).delta
        take = u[n_cal:] <= delta
        risks.append(float((loss[n_cal:] * take).mean()))
        accepted.append(float(take.mean()))
    mean_risk = float(np.mean(risks))
    noise = 3 * float(np.std(risks)) / math.sqrt(splits)
    assert mean_risk <= alpha + noise
    assert mean_risk >= 0.5 * alpha  # not trivially conservative
    assert 0.2 < float(np.mean(accepted)) < 1.0


@pytest.mark.parametrize("alpha, loss_kind", [(0.05, "binary"), (0.05, "graded")])
def test_ltt_bounds_the_true_risk_for_all_but_epsilon_of_calibration_draws(alpha, loss_kind):
    """u ~ U(0, 1), loss = 1[wrong] (x a uniform grade) with P(wrong | u) = 0.4 u: the true risk of
    a threshold is known in closed form (0.2 delta^2, halved for graded losses). Over 300 draws of
    200 calibration answers, Learn then Test's delta has true risk > alpha in at most epsilon (0.1) of
    draws, CRC's in far more (its bound is an average over draws), and LTT still accepts answers."""
    rng = np.random.default_rng(3)
    scale = 0.2 if loss_kind == "binary" else 0.1
    over = {"ltt": 0, "crc": 0}
    ltt_deltas = []
    for _ in range(300):
        u = rng.random(200)
        loss = (rng.random(200) < 0.4 * u) * (1.0 if loss_kind == "binary" else rng.random(200))
        for name, threshold in (("ltt", ltt_delta(u, loss, alpha, 0.1)), ("crc", crc_delta(u, loss, alpha))):
            delta = min(max(threshold.delta, 0.0), 1.0)
            over[name] += scale * delta**2 > alpha
            if name == "ltt":
                ltt_deltas.append(delta)
    assert over["ltt"] <= 0.1 * 300
    assert over["crc"] > over["ltt"]
    assert np.mean(ltt_deltas) > 0.4 * math.sqrt(alpha / scale)  # not vacuous: a good share of the oracle delta


def test_ltt_edge_cases_and_its_p_value():
    need = min_calibration_size(0.05, epsilon=0.1)
    assert 40 < need < 60  # zero losses certify only from about log(1 / eps) / log(1 + alpha) answers
    assert ltt_delta([0.1] * (need - 1), [0.0] * (need - 1), 0.05, 0.1).delta == -math.inf
    assert ltt_delta([0.1] * need, [0.0] * need, 0.05, 0.1).delta == U_MAX
    assert wsr_p_value(np.full(500, 0.5), 0.05, 0.1) == 1.0  # mean far above alpha: nothing rejected
    assert wsr_p_value(np.zeros(500), 0.05, 0.1) < 1e-6
    rng = np.random.default_rng(0)
    u, loss = rng.random(300), (rng.random(300) < 0.3).astype(float) * rng.random(300)
    deltas = [ltt_delta(u, loss, 0.05, eps).delta for eps in (0.01, 0.05, 0.1, 0.3)]
    assert deltas == sorted(deltas)  # a looser epsilon never escalates more
    assert ltt_delta(u, loss, 0.05, 0.1).delta <= crc_delta(u, loss, 0.05).delta
    with pytest.raises(ValueError):
        ltt_delta([0.1], [0.0, 1.0], 0.05, 0.1)
    with pytest.raises(ValueError):
        ltt_delta([0.1], [0.5], 0.05, 1.5)


def test_the_old_rule_on_correct_answers_only_does_not_bound_wrong_and_accepted():
    """Why the rank rule among correct answers was replaced: with u weakly informative, its delta
    (95th percentile of correct-answer u) accepts most wrong answers; CRC's does not."""
    rng = np.random.default_rng(5)
    u = rng.random(2000)
    wrong = rng.random(2000) < 0.2 + 0.3 * u
    correct_u = np.sort(u[:1000][~wrong[:1000]])
    old_delta = correct_u[math.ceil(0.95 * (len(correct_u) + 1)) - 1]
    old_risk = float((wrong[1000:] & (u[1000:] <= old_delta)).mean())
    new_delta = crc_delta(u[:1000], wrong[:1000].astype(float), 0.05).delta
    new_risk = float((wrong[1000:] & (u[1000:] <= new_delta)).mean())
    assert old_risk > 0.2 and new_risk <= 0.05 + 0.02


def test_realised_risk_reports_a_wilson_interval():
    check = realised_risk([1.0, 0.0, 0.0, 1.0] + [0.0] * 36)
    assert check.n == 40 and check.risk == pytest.approx(0.05)
    assert check.wilson[0] < 0.05 < check.wilson[1] and check.status(0.05) == "ok"
    assert realised_risk([1.0] * 20 + [0.0] * 20).status(0.05) == "VIOLATED"
    assert realised_risk([]).status(0.05) == "no data"


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
