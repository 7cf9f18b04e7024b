"""Client-side baseline policies and the bench's scoring, offline (fake served calls)."""

import json

import numpy as np
import pytest

from clients import baselines as bl
from clients import curves
from clients.bench import Bootstrap, served_table, SystemRun, mean_quality, oracle_run, quality_ratio_ci, reference_stats, system_row, task_indices
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


def _table(records):
    """The offline table of the fake world: right answers are confident (u 0.1), wrong ones not."""
    table = {}
    for r in records:
        table[r["id"]] = {t: {"prediction": label, "u": 0.1 if label == "high" else 0.8, "tokens": 100, "dollars": 0.1 * PRICES[t],
                              "quality": float(label == "high")} for t, label in r["answers"].items()}
    return table


def test_a_swept_system_is_served_with_the_same_decisions_it_was_replayed_with():
    # FrugalGPT's rule: stop at the first answer whose score reaches the knob
    system = curves.scored_cascade("frugalgpt", bl.frugal_chain, bl.self_confidence)
    record = _record(0)
    offline = curves.replay_system(curves.System(system.name, system.decide, (0.5,)), [record], _table([record]))[0]
    server = FakeServer({"t1": 0.8, "t2": 0.8, "t3": 0.1, "t4": 0.1})
    routed = bl.SystemPolicy(system, 0.5).answer(record, server)
    assert server.calls == ["t1", "t2", "t3"] and routed.final.metadata["tier"] == "t3" == offline.tiers[0]
    assert offline.dollars[0] == pytest.approx(sum(c.metadata["cost_usd"] for c in routed.calls))
    server.calls.clear()
    bl.SystemPolicy(curves.scored_cascade("automix", bl.automix_chain, bl.self_confidence), 0.99).answer(record, server)
    assert server.calls == ["t1", "t4"]  # small, then straight to the large model


def test_sweeps_trace_a_curve_and_the_headline_takes_the_cheapest_matching_setting():
    # half the records: T1 right; the other half only T4 right. Confidence separates them.
    records = [_record(i, right_from="t1" if i % 2 else "t4") for i in range(40)]
    table = _table(records)
    systems = [curves.fixed("t1"), curves.fixed("t4"), curves.scored_cascade("automix", bl.automix_chain, bl.self_confidence),
               curves.random_matched(seed=1)]
    result = curves.sweep(systems, records, table, n_boot=50, reference="automix")
    automix = result["curves"]["automix"]
    # confidence 0.2 on wrong answers, 0.9 on right ones: any knob in (0.2, 0.9] is perfect at ~half T4's cost
    assert automix["matched"]["quality_ratio"] == 1.0 and automix["matched"]["cost_ratio"] < 0.52
    random = result["curves"]["random (matched cost)"]["curve"]
    assert random[0]["cost_ratio"] < 0.01 and random[-1]["cost_ratio"] == 1.0  # p = 0 ... 1
    assert [c["cost_ratio"] for c in random] == sorted(c["cost_ratio"] for c in random)
    rows = {r["name"]: r for r in result["headline"]}
    assert rows["always-t1"]["cost_ratio_at_match"] is None  # never reaches 0.97 x T4
    assert rows["always-t4"]["cost_ratio_at_match"] == 1.0
    low, high = rows["always-t4"]["diff_vs_routenlp_ci95"]
    assert 0.3 < low < 0.5 < high < 0.7  # Always-T4 costs about half of its own cost more than the cascade
    knob, fit = curves.choose_knob(systems[2], records, table)
    assert fit["met"] and 0.19 < knob <= 0.9  # 1 - u is 0.9 on right answers, just under 0.2 on wrong ones


def test_pass_routers_binary_and_four_tier():
    p = {"t1": 0.2, "t2": 0.6, "t3": 0.9, "t4": 0.99}
    binary = curves.pass_router("routellm-mf (T2/T4)", lambda r: p, ("t2", "t4"))
    four = curves.pass_router("routellm-mf (4-tier)", lambda r: p)
    record = _record(0)
    assert binary.decide(record, {}, 0.5) == ["t2"] and binary.decide(record, {}, 0.7) == ["t4"]
    assert four.decide(record, {}, 0.5) == ["t2"] and four.decide(record, {}, 0.7) == ["t3"] and four.decide(record, {}, 0.1) == ["t1"]
    assert four.decide({**record, "task": "cs_response"}, {}, 0.1) == ["t2"]  # T1 does not serve generation


def test_matrix_factorisation_router_learns_per_tier_labels_and_hybrid_labels_drop_both_wrong():
    records = [{"id": f"r{i}", "task": "legal_risk", "text": ("termination at any time" if i % 2 else "governing law of delaware") + f" {i}"} for i in range(80)]
    labels = {"t1": [bool(i % 2) for i in range(80)], "t2": [True] * 80, "t3": [False] * 80, "t4": [not (i % 2) for i in range(80)]}
    clf = bl.TierPassClassifier(dim=8).fit(records, labels)
    p = clf.probabilities([{"task": "legal_risk", "text": "termination at any time"}, {"task": "legal_risk", "text": "governing law of delaware"}])
    assert p[0]["t1"] > 0.5 > p[1]["t1"] and p[1]["t4"] > 0.5 > p[0]["t4"]
    assert p[0]["t2"] == 1.0 and p[0]["t3"] == 0.0  # one class only: its rate
    answers = {"a": {"t1": {"quality": 0.0}, "t2": {"quality": 0.0}, "t3": {"quality": 1.0}, "t4": {"quality": 0.0}},
               "b": {"t1": {"quality": 1.0}, "t2": {"quality": 0.0}, "t3": {"quality": 1.0}, "t4": {"quality": 1.0}}}
    rows = [{"id": "a", "task": "legal_risk"}, {"id": "b", "task": "legal_risk"}]
    hybrid = bl.hybrid_labels(rows, answers, {"legal_risk": 0.5})
    assert hybrid == {"t1": [False, True], "t2": [False, False], "t3": [True, True], "t4": [False, True]}  # a: both wrong is not fine
    assert bl.routellm_labels(rows, answers, {"legal_risk": 0.5})["t3"] == [True, True]


def test_bench_sample_is_seeded_and_stratified_by_label_not_first_by_id():
    from routenlp.data.sampling import stratified_sample

    records = [{"id": f"r{i:03d}", "task": "legal_risk", "target": "fair" if i < 150 else "unfair"} for i in range(200)]
    sample = stratified_sample(records, 40, seed=3)
    assert len(sample) == 40 and sum(r["target"] == "unfair" for r in sample) == 10  # 25%, as in the split
    assert sample != records[:40] and stratified_sample(records, 40, seed=3) == sample
    assert stratified_sample(records, 40, seed=4) != sample
    assert stratified_sample(records, None, 0) == records


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


def test_served_table_holds_each_tiers_served_answer_for_the_offline_replays():
    records = [_record(i, right_from="t2") for i in range(3)]
    server = FakeServer({"t1": 0.7, "t2": 0.2, "t3": 0.1, "t4": 0.05})
    fixed = {f"always-{t}": SystemRun(f"always-{t}", [bl.FixedTier(t).answer(r, server) for r in records], [5.0] * 3) for t in bl.TIERS}
    table = served_table(fixed, records)
    assert table["r0"]["t1"] == {"task": "legal_risk", "prediction": "low", "u": 0.7, "tokens": 100, "dollars": pytest.approx(0.001), "quality": 0.0}
    assert table["r2"]["t4"]["quality"] == 1.0 and set(table["r1"]) == set(bl.TIERS)
    # replaying a system over the table reproduces what serving it live does
    automix = curves.scored_cascade("automix", bl.automix_chain, bl.self_confidence)
    point = curves.replay_system(curves.System("automix", automix.decide, (0.5,)), records, table)[0]
    assert point.tiers == ("t4", "t4", "t4") and point.dollars[0] == pytest.approx(0.001 + 0.8)


def test_curve_scorer_uses_stored_example_scores_only_where_the_metric_is_their_mean():
    from routenlp.metrics import corpus_score, example_score

    records = [{"id": f"s{i}", "task": "fin_summary", "target": f"revenue rose {i} percent"} for i in range(6)]
    records += [{"id": f"c{i}", "task": "cs_intent", "target": "card_arrival" if i % 2 else "lost_card"} for i in range(6)]
    table = {}
    for i, r in enumerate(records):
        guess = {"t2": "revenue fell", "t4": f"revenue rose {i}"} if r["task"] == "fin_summary" else {"t2": "card_arrival", "t4": r["target"]}
        table[r["id"]] = {t: {"prediction": p, "quality": example_score(r["task"], p, r["target"])} for t, p in guess.items()}
    scorer = curves.Scorer(records, table, n_boot=20, seed=0)
    tiers = ["t4", "t2"] * 6
    quality, boot = scorer.quality(tiers)
    expected = np.mean([corpus_score(task, [table[r["id"]][t]["prediction"] for r, t in zip(records, tiers) if r["task"] == task],
                                     [r["target"] for r in records if r["task"] == task]) for task in ("cs_intent", "fin_summary")])
    assert quality == pytest.approx(expected) and boot.shape == (20,) and boot.std() > 0
