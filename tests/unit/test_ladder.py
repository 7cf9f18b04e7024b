"""The ladder table (export/ladder.py) on hand-made all-tier dev answer tables: qualities with
bootstrap intervals, T4's paired lead over T2, nestedness, the oracle vs Always-T4, and the rules
stated in words."""

from __future__ import annotations

import numpy as np
import pytest

from export.ladder import LadderRules, format_ladder, ladder_table
from routenlp.metrics import corpus_score, example_score
from routenlp.metrics.task_bootstrap import Bootstrap

PRICES = {"t1": 0.001, "t2": 0.01, "t3": 0.1, "t4": 1.0}
RISK = ("none", "fair", "potentially_unfair", "clearly_unfair")
SUMMARY = "revenue rose {i} percent to a record in the fourth quarter"
RULES = LadderRules(t1_floors={"legal_risk": 0.4})


def _risk_records(n: int = 40) -> list[dict]:
    return [{"id": f"legal_risk:{i}", "task": "legal_risk", "target": RISK[i % 4]} for i in range(n)]


def _summary_records(n: int = 40) -> list[dict]:
    return [{"id": f"fin_summary:{i}", "task": "fin_summary", "target": SUMMARY.format(i=i)} for i in range(n)]


def _answer(record: dict, tier: str, right: bool, tokens: int = 100) -> dict:
    if record["task"] == "legal_risk":
        prediction = record["target"] if right else RISK[(RISK.index(record["target"]) + 1) % 4]
    else:
        prediction = record["target"] if right else "the call was about other things"
    return {"id": record["id"], "tier": tier, "prediction": prediction, "tokens": tokens,
            "quality": example_score(record["task"], prediction, record["target"])}


def table(records: list[dict], right: dict[str, callable]) -> dict:
    """id -> tier -> answer; right[tier](i) says whether that tier answers record i right. T1
    answers only legal_risk (it has no generation head)."""
    answers: dict[str, dict] = {}
    for i, record in enumerate(records):
        for tier, is_right in right.items():
            if tier == "t1" and record["task"] != "legal_risk":
                continue
            answers.setdefault(record["id"], {})[tier] = _answer(record, tier, is_right(i % 40))
    return answers


# A nested ladder: the cheapest tier that is right on record i is t1 below 20, t2 below 24,
# t3 below 32 and t4 always; every pricier tier is right wherever a cheaper one is.
NESTED = {"t1": lambda i: i < 20, "t2": lambda i: i < 24, "t3": lambda i: i < 32, "t4": lambda i: True}
BARS = {"legal_risk": 0.5, "fin_summary": 0.5}
PAPER = {"legal_risk": 0.82, "fin_summary": 0.42}


def test_a_nested_ladder_passes_every_rule():
    records = _risk_records() + _summary_records()
    ladder = ladder_table(table(records, NESTED), records, BARS, PRICES, PAPER, RULES, n_boot=100)
    risk, summary = ladder["tasks"]["legal_risk"], ladder["tasks"]["fin_summary"]
    assert [risk["tiers"][t]["quality"] for t in ("t1", "t2", "t3", "t4")] == [0.5, 0.6, 0.8, 1.0]
    assert list(summary["tiers"]) == ["t2", "t3", "t4"]  # T1 does not serve generation
    assert summary["nestedness"] == {"cheapest": "t2", "value": 1.0, "n": 24}
    assert risk["nestedness"] == {"cheapest": "t1", "value": 1.0, "n": 20}
    for row in (risk, summary):
        for tier, cell in row["tiers"].items():
            low, high = cell["ci95"]
            assert low <= cell["quality"] <= high
        assert row["t4_minus_t2"]["ci95"][0] > 0
    assert risk["t4_minus_t2"]["difference"] == pytest.approx(0.4)
    # oracle: legal_risk t1 20, t2 4, t3 8, t4 8; fin_summary t2 24, t3 8, t4 8 (100 tokens each)
    oracle = ladder["oracle"]
    assert oracle["quality_ratio"] == 1.0
    dollars = 0.1 * (20 * PRICES["t1"] + 28 * PRICES["t2"] + 16 * PRICES["t3"] + 16 * PRICES["t4"])
    assert oracle["cost_ratio"] == pytest.approx(dollars / (80 * 0.1 * PRICES["t4"]), abs=1e-4)
    assert oracle["mix"] == {"t1": 0.25, "t2": 0.35, "t3": 0.2, "t4": 0.2}
    assert all(rule["passed"] for rule in ladder["rules"]), ladder["failures"]
    assert ladder["failures"] == []
    printed = format_ladder(ladder)
    assert "0.600 [" in printed and "FAIL" not in printed and "cost ratio" in printed


def test_a_broken_ladder_says_which_rules_fail_and_by_how_much():
    records = _risk_records() + _summary_records()
    # T1 is right on everything on legal_risk; T4 only on the second half of each task, T2 and T3
    # on the first: T4 is beaten, not nested over the cheap tiers, and barely better than T2.
    broken = {"t1": lambda i: True, "t2": lambda i: i < 20, "t3": lambda i: i < 12, "t4": lambda i: i >= 18}
    ladder = ladder_table(table(records, broken), records, BARS, PRICES, PAPER, RULES, n_boot=100)
    verdict = {rule["rule"]: rule for rule in ladder["rules"]}
    assert not verdict["quality non-decreasing with price"]["passed"]
    assert "legal_risk: t2 (0.500) < t1 (1.000)" in verdict["quality non-decreasing with price"]["detail"]
    assert "fin_summary: t3" in verdict["quality non-decreasing with price"]["detail"]
    assert "legal_risk (T4 0.550 < t1 1.000" in verdict["T4 best on every task"]["detail"]
    assert not verdict["T4's lead over T2 outside the 95% CI"]["passed"]
    assert "0 of 2 tasks" in verdict["T4's lead over T2 outside the 95% CI"]["detail"]
    nested = verdict["nestedness >= 0.85 per task"]
    # legal_risk: t1 always meets the bar, t4 on 22 of 40; fin_summary: t2 on 20, t4 on 2 of those
    assert not nested["passed"] and "legal_risk 0.550 (n=40)" in nested["detail"] and "fin_summary 0.100 (n=20)" in nested["detail"]
    assert ladder["tasks"]["fin_summary"]["nestedness"]["value"] == 0.1
    assert verdict["each T1 head keeps today's dev quality"]["passed"]
    assert set(ladder["failures"]) == {r["detail"] for r in ladder["rules"] if not r["passed"]}
    assert "FAIL T4 best on every task" in format_ladder(ladder)


def test_the_bar_is_an_input():
    records = _risk_records() + _summary_records()
    # fin_summary answers that only partly overlap the reference: they meet a low bar, not a high one
    answers = table(records, NESTED)
    for record in _summary_records():
        row = answers[record["id"]]["t2"]
        row["prediction"] = "revenue rose to a record"
        row["quality"] = example_score("fin_summary", row["prediction"], record["target"])
    low = ladder_table(answers, records, {**BARS, "fin_summary": 0.3}, PRICES, PAPER, RULES, n_boot=50)
    high = ladder_table(answers, records, {**BARS, "fin_summary": 0.9}, PRICES, PAPER, RULES, n_boot=50)
    assert low["tasks"]["fin_summary"]["nestedness"]["n"] == 40 and high["tasks"]["fin_summary"]["nestedness"]["n"] == 0
    assert high["tasks"]["fin_summary"]["nestedness"]["value"] is None
    assert any("fin_summary undefined (t2 never meets the bar)" in f for f in high["failures"])
    # the oracle stops at t2 on every fin_summary record only under the low bar (+ 4 legal_risk)
    assert low["oracle"]["mix"]["t2"] == 0.55 and high["oracle"]["mix"]["t2"] == 0.05
    assert low["oracle"]["cost_ratio"] < high["oracle"]["cost_ratio"]


def test_intervals_recompute_the_corpus_metric_on_each_resample():
    """cs_intent's macro-F1 is not a mean of example scores: its interval must come from the
    metric recomputed per resample, over the same resamples for every tier (paired)."""
    labels = ["card_arrival", "lost_or_stolen_card", "Refund_not_showing_up"]
    records = [{"id": f"cs_intent:{i}", "task": "cs_intent", "target": labels[i % 3]} for i in range(30)]
    predictions = {"t1": [r["target"] if i % 3 else labels[0] for i, r in enumerate(records)],
                   "t2": [labels[0]] * 30, "t3": [r["target"] for r in records], "t4": [r["target"] for r in records]}
    answers = {r["id"]: {t: {"prediction": predictions[t][i], "tokens": 10, "quality": example_score("cs_intent", predictions[t][i], r["target"])}
                         for t in predictions} for i, r in enumerate(records)}
    ladder = ladder_table(answers, records, {"cs_intent": 0.5}, PRICES, {"cs_intent": 0.92}, RULES, n_boot=100, seed=7)
    bootstrap = Bootstrap({"cs_intent": np.arange(30)}, 100, 7)
    targets = [r["target"] for r in records]
    by_hand = [corpus_score("cs_intent", [predictions["t1"][j] for j in r["cs_intent"]], [targets[j] for j in r["cs_intent"]]) for r in bootstrap.resamples]
    assert ladder["tasks"]["cs_intent"]["tiers"]["t1"]["ci95"] == [round(float(v), 4) for v in np.percentile(by_hand, [2.5, 97.5])]
    assert ladder["tasks"]["cs_intent"]["tiers"]["t1"]["quality"] == round(corpus_score("cs_intent", predictions["t1"], targets), 4)
    assert ladder["tasks"]["cs_intent"]["tiers"]["t4"]["ci95"] == [1.0, 1.0]
    # paired: t4 - t2 on shared resamples is t4's 1.0 minus t2's per-resample macro-F1
    t2_boot = [corpus_score("cs_intent", [labels[0]] * 30, [targets[j] for j in r["cs_intent"]]) for r in bootstrap.resamples]
    assert ladder["tasks"]["cs_intent"]["t4_minus_t2"]["ci95"] == [round(float(v), 4) for v in np.percentile(1.0 - np.array(t2_boot), [2.5, 97.5])]
    again = ladder_table(answers, records, {"cs_intent": 0.5}, PRICES, {"cs_intent": 0.92}, RULES, n_boot=100, seed=7)
    assert again == ladder  # seeded
