"""Client-side baseline policies and the bench's scoring, offline (fake served calls)."""

import json

import numpy as np
import pytest

from clients import baselines as bl
from clients.bench import Bootstrap, SystemRun, mean_quality, oracle_run, quality_ratio_ci, reference_stats, system_row, task_indices
from clients.served_eval import ServedAnswer

PRICES = {"t1": 0.01, "t2": 0.10, "t3": 0.80, "t4": 8.00}
BARS = {"legal_risk": 0.5, "cs_response": 0.3}


class FakeServer:
    """(record, tier) -> a served answer: label per tier from the record, u per tier, 100 tokens."""

    def __init__(self, u):
        self.u = u
        self.calls = []

    def __call__(self, record, tier):
        self.calls.append(tier)
        label = record["answers"][tier]
        meta = {"tier": tier, "u": {tier: self.u[tier]}, "tokens": {tier: 100}, "cost_usd": 0.1 * PRICES[tier], "escalations": 0}
        return ServedAnswer(record, json.dumps({"label": label}), meta, 5.0)


def _record(i, right_from="t3"):
    answers = {t: ("high" if bl.TIERS.index(t) >= bl.TIERS.index(right_from) else "low") for t in bl.TIERS}
    return {"id": f"r{i}", "task": "legal_risk", "text": f"clause {i}", "target": "high", "answers": answers}


def test_fixed_tier_uses_t2_for_generation_tasks_and_rule_by_task_picks_the_cheapest_meeting_tier():
    server = FakeServer({t: 0.1 for t in bl.TIERS})
    bl.FixedTier("t1").answer({"task": "cs_response", "answers": {"t2": "x"}, "target": "x", "text": "hi"}, server)
    assert server.calls == ["t2"]
    quality = {"legal_risk": {"t1": 0.4, "t2": 0.6, "t3": 0.7, "t4": 0.65}, "cs_response": {"t2": 0.1, "t3": 0.2, "t4": 0.25}}
    assert bl.rule_by_task(quality, BARS) == {"legal_risk": "t2", "cs_response": "t4"}  # none meets 0.3: the best


def test_scored_cascade_stops_at_the_first_confident_answer():
    server = FakeServer({"t1": 0.9, "t2": 0.05, "t3": 0.0, "t4": 0.0})
    routed = bl.ScoredCascade("frugalgpt", bl.frugal_chain, bl.self_confidence, 0.9).answer(_record(0), server)
    assert server.calls == ["t1", "t2"] and routed.final.metadata["tier"] == "t2"
    server.calls.clear()
    bl.ScoredCascade("automix", bl.automix_chain, bl.self_confidence, 0.99).answer(_record(0), server)
    assert server.calls == ["t1", "t4"]  # small, then straight to the large model


def test_budgeted_threshold_search_and_matched_random_cost():
    records = [_record(i, right_from="t1" if i % 2 else "t4") for i in range(20)]
    answers = {r["id"]: {t: {"quality": float(r["answers"][t] == "high"), "u": 0.1 if r["answers"][t] == "high" else 0.8, "tokens": 100} for t in bl.TIERS} for r in records}
    generous, fit = bl.search_threshold(answers, records, bl.frugal_chain, bl.self_confidence, PRICES, BARS, budget=10.0)
    assert fit["pool_meets_bar"] == 1.0  # confidence separates right from wrong: everything right
    tight, tight_fit = bl.search_threshold(answers, records, bl.frugal_chain, bl.self_confidence, PRICES, BARS, budget=0.002)
    assert tight_fit["pool_dollars"] <= 0.002 and tight_fit["pool_meets_bar"] == 0.5
    assert bl.p_top_for_cost(0.1, cheap_cost=0.0, top_cost=1.0) == pytest.approx(0.1)
    assert bl.p_top_for_cost(5.0, 0.0, 1.0) == 1.0 and bl.p_top_for_cost(0.1, 1.0, 1.0) == 0.0
    policy = bl.RandomMatchedCost(0.25, seed=1)
    tiers = [policy.answer(_record(i), FakeServer({t: 0.1 for t in bl.TIERS})).final.metadata["tier"] for i in range(400)]
    assert 0.18 < tiers.count("t4") / 400 < 0.32 and set(tiers) == {"t1", "t4"}


def test_text_classifier_learns_a_separable_label_and_handles_one_class():
    records = [{"task": "legal_risk", "text": ("termination at any time" if i % 2 else "governing law of delaware") + f" {i}"} for i in range(60)]
    labels = [bool(i % 2) for i in range(60)]
    clf = bl.TextClassifier().fit(records, labels)
    p = clf.probability([{"task": "legal_risk", "text": "termination at any time"}, {"task": "legal_risk", "text": "governing law of delaware"}])
    assert p[0] > 0.5 > p[1]
    assert bl.TextClassifier().fit(records, [True] * 60).probability(records[:2]).tolist() == [1.0, 1.0]


def test_oracle_takes_the_cheapest_fixed_tier_answer_meeting_the_bar():
    records = [_record(0, right_from="t2"), _record(1, right_from="t4")]
    server = FakeServer({t: 0.1 for t in bl.TIERS})
    fixed = {f"always-{t}": SystemRun(f"always-{t}", [bl.FixedTier(t).answer(r, server) for r in records], [1.0, 1.0]) for t in bl.TIERS}
    oracle = oracle_run(fixed, records, BARS)
    assert [r.final.metadata["tier"] for r in oracle.routed] == ["t2", "t4"]


def test_system_row_ratios_and_paired_bootstrap_interval():
    records = [_record(i, right_from="t1" if i % 4 else "t4") for i in range(40)]
    server = FakeServer({t: 0.1 for t in bl.TIERS})
    t4 = SystemRun("always-t4", [bl.FixedTier("t4").answer(r, server) for r in records], [10.0] * 40)
    t1 = SystemRun("always-t1", [bl.FixedTier("t1").answer(r, server) for r in records], [1.0] * 39 + [900.0])
    idx = task_indices(records)
    bootstrap = Bootstrap(idx, n_boot=100)
    reference = {**reference_stats(t4, records, idx, bootstrap), "dollars": 0.8}
    row = system_row(t1, records, idx, reference, {"legal_risk": 500.0}, bootstrap)
    assert row["quality_ratio"] == pytest.approx(0.75) and row["cost_ratio"] == pytest.approx(0.00125)
    low, high = row["quality_ratio_ci95"]
    assert low < 0.75 < high and high <= 1.0
    assert row["sla_violation"] == pytest.approx(1 / 40) and row["mix"]["t1"] == 1.0 and row["errors"] == 0
    t1_boot = bootstrap.qualities([json.loads(r.final.output)["label"] for r in t1.routed], [r["target"] for r in records])
    assert quality_ratio_ci(t1_boot, t1_boot) == (1.0, 1.0)
    assert mean_quality(idx, ["high"] * 40, [r["target"] for r in records])[0] == 1.0


def test_bootstrap_shortcut_for_mean_metrics_matches_the_corpus_metric():
    records = [{"task": "fin_summary", "target": f"revenue rose {i} percent in the quarter"} for i in range(12)]
    records += [{"task": "legal_risk", "target": "high" if i % 2 else "low"} for i in range(12)]
    predictions = [f"revenue fell {i} percent" for i in range(12)] + ["high"] * 12
    targets = [r["target"] for r in records]
    idx = task_indices(records)
    bootstrap = Bootstrap(idx, n_boot=5, seed=3)
    fast = bootstrap.qualities(predictions, targets)
    slow = [mean_quality(idx, predictions, targets, resample)[0] for resample in bootstrap.resamples]
    assert fast == pytest.approx(slow, abs=1e-9)
