"""Distillation data from served teacher answers, and the loop's report, offline."""

import json

from clients.served_eval import ServedAnswer
from coopt.distill import (
    TeacherAnswer,
    build_distillation,
    head_can_learn,
    served_teacher,
    student_tier,
    teacher_better_tasks,
)
from coopt.iteration import with_replay
from coopt.report import cluster_rows, comparison_rows, iteration_rows, markdown, summary_rows


def _served(record, output, cost=0.5, error=None):
    """A served always-t4 answer, as the teacher (coopt.distill.served_teacher reads it)."""
    meta = None if error else {"tier": "t4", "cost_usd": cost}
    return served_teacher([ServedAnswer(record, None if error else output, meta, 10.0, error)])[0]


RISK = {"id": "r1", "task": "legal_risk", "text": "We may end the contract at any time.", "target": "potentially_unfair"}
RISK_OK = {"id": "r2", "task": "legal_risk", "text": "You may cancel.", "target": "fair"}
SUMMARY = {"id": "s1", "task": "fin_summary", "text": "Revenue rose 5% to $3 billion.", "target": "revenue rose 5%"}


def test_each_task_teaches_its_cheapest_servable_tier():
    assert student_tier("legal_risk") == "t1" and student_tier("fin_summary") == "t2"


def test_teacher_answers_are_kept_only_where_they_beat_the_student():
    student = {"r1": {"t1": {"quality": 0.0}}, "r2": {"t1": {"quality": 1.0}}, "s1": {"t2": {"quality": 0.0}}}
    teacher = [
        _served(RISK, json.dumps({"label": "potentially_unfair"})),  # right where T1 was wrong: kept
        _served(RISK_OK, json.dumps({"label": "potentially_unfair"})),  # wrong where T1 was right: dropped
        _served(SUMMARY, "revenue rose 5% to $3 billion"),  # better than T2's empty summary: kept
        _served({**SUMMARY, "id": "s2"}, None, error="UNAVAILABLE: t4 down"),  # counted, never silently lost
    ]
    distillation = build_distillation(teacher, student, {"t2": {"old"}})
    assert [(e.record["id"], e.student) for e in distillation.examples] == [("r1", "t1"), ("s1", "t2")]
    assert distillation.examples[0].record["target"] == "potentially_unfair"
    assert distillation.t1_records() == {"legal_risk": [distillation.examples[0].record]}
    prompt, answer = distillation.for_student("t2")[0].prompt_pair()
    assert "Revenue rose 5%" in prompt and answer == "revenue rose 5% to $3 billion"
    assert distillation.trained_on == {"t1": {"r1"}, "t2": {"old", "s1"}}  # cumulative over iterations
    summary = distillation.summary()
    assert summary["asked_teacher"] == 4 and summary["kept"] == 2 and summary["teacher_errors"] == 1 and summary["teacher_dollars"] == 1.5
    assert distillation.key() != build_distillation(teacher[:1], student, {}).key()


def test_the_random_share_is_kept_unfiltered_and_tasks_where_t4_is_worse_are_not_distilled():
    student = {"r1": {"t1": {"quality": 0.0}}, "r2": {"t1": {"quality": 1.0}}, "s1": {"t2": {"quality": 0.0}}}
    teacher = [
        _served(RISK, json.dumps({"label": "potentially_unfair"})),  # targeted, beats the student: kept
        _served(RISK_OK, json.dumps({"label": "potentially_unfair"})),  # random share, worse: still kept
        _served(SUMMARY, "revenue rose 5% to $3 billion"),
    ]
    kept = build_distillation(teacher, student, {}, filtered={"r1"})
    assert [e.record["id"] for e in kept.examples] == ["r1", "r2", "s1"]
    assert [e.record["id"] for e in build_distillation(teacher, student, {}, filtered={"r1", "r2"}).examples] == ["r1", "s1"]
    gated = build_distillation(teacher, student, {}, filtered={"r1"}, teacher_better={"legal_risk": False, "fin_summary": True})
    assert [e.record["id"] for e in gated.examples] == ["s1"] and gated.summary()["skipped_tasks"] == ["legal_risk"]
    assert gated.teacher_dollars == 1.5  # the teacher was still paid for


def test_teacher_answers_outside_the_heads_label_set_are_never_targets():
    # T4 decodes free text: 'atK' is no cs_intent label, and a NER answer needs one known tag per word
    intent = {"id": "i1", "task": "cs_intent", "text": "my card is lost", "target": "lost_or_stolen_card"}
    ner = {"id": "n1", "task": "fin_ner", "text": "Acme Corp pays", "tokens": ["Acme", "Corp", "pays"]}
    ner["target"] = ["I-ORG", "I-ORG", "O"]
    assert head_can_learn(intent, "lost_or_stolen_card") and not head_can_learn(intent, "atK")
    assert head_can_learn(ner, ["I-ORG", "I-ORG", "O"])
    assert not head_can_learn(ner, ["I-ORG", "O"]) and not head_can_learn(ner, ["B-ORG", "O", "O"])
    student = {"i1": {"t1": {"quality": 0.0}}, "n1": {"t1": {"quality": 0.0}}}
    teacher = [TeacherAnswer(intent, "atK", 0.2), TeacherAnswer(ner, ["I-ORG", "I-ORG", "O"], 0.3)]
    kept = build_distillation(teacher, student, {}, filtered=set())  # both in the unfiltered random share
    assert [e.record["id"] for e in kept.examples] == ["n1"]
    assert kept.unlearnable == 1 and kept.summary()["unlearnable"] == 1
    assert kept.teacher_dollars == 0.5


def test_teacher_better_compares_t4_with_the_student_tier_on_the_pool():
    records = [{"id": f"r{i}", "task": "legal_risk", "target": "fair"} for i in range(4)] + [{"id": "s", "task": "fin_summary", "target": "up 5%"}]
    rows = {f"r{i}": {"t1": {"prediction": "fair"}, "t4": {"prediction": "fair" if i < 2 else "unfair"}} for i in range(4)}
    rows["s"] = {"t2": {"prediction": "down"}, "t4": {"prediction": "up 5%"}}
    assert teacher_better_tasks(rows, records) == {"legal_risk": False, "fin_summary": True}


def test_fine_tuning_data_replays_the_original_training_data():
    new, original = ["n1", "n2"], [f"o{i}" for i in range(100)]
    mixed = with_replay(new, original, 3.0, seed=0)
    assert len(mixed) == 8 and set(new) <= set(mixed) and len(set(mixed)) == 8
    assert mixed == with_replay(new, original, 3.0, seed=0) and mixed != with_replay(new, original, 3.0, seed=1)
    assert with_replay(new, original[:3], 3.0, 0).count("o0") == 1 and len(with_replay(new, original[:3], 3.0, 0)) == 5
    assert with_replay([], original, 3.0, 0) == []  # nothing distilled: nothing to retrain


def _row(i, cost, quality, distilled=True):
    return {
        "iteration": i, "cost_ratio": cost, "quality_ratio": quality, "router_accuracy": 0.6, "t1_t2_share": 0.7,
        "failures": None if i == 0 else 40, "clusters_used": 0 if i == 0 else 5, "repository_version": 1 + i,
        "distilled": {"asked_teacher": 30, "kept": 12, "teacher_dollars": 9.5} if distilled and i else None,
        "swap": {"sent": 100, "failed": 0, "seconds": 80.0} if i else None,
    }  # fmt: skip


def test_the_report_has_one_row_per_iteration_the_reductions_and_the_clusters():
    result = {
        "runs": {"targeted": [_row(0, 0.20, 1.0), _row(1, 0.18, 1.0), _row(2, 0.16, 0.99)], "random": [_row(0, 0.20, 1.0), _row(1, 0.19, 1.0)]},
        "clusters": {"targeted/1": [{"task": "legal_clause", "size": 9, "mean_gap": 0.5, "priority": 4.5, "tiers": {"t1": 9}, "examples": ["The licensee shall indemnify ..."]}]},
        "server_crashes": [{"during": "swap to version 4 (targeted iteration 1), 3 of 40 requests failed", "ended": "killed by SIGSEGV", "restart_s": 95.2}],
        "swap_totals": {"swaps": 4, "sent": 400, "failed": 3},
        "dev_records": 600, "pool_records": 1000, "promoted": {"version": 9, "from_version": 3},
    }  # fmt: skip
    rows = iteration_rows(result)
    assert [(r["run"], r["iter"], r["cost ratio"]) for r in rows] == [
        ("targeted", "0", "0.2000"), ("targeted", "1", "0.1800"), ("targeted", "2", "0.1600"), ("random", "0", "0.2000"), ("random", "1", "0.1900"),
    ]  # fmt: skip
    assert rows[1]["teacher asked/kept"] == "30/12" and rows[1]["swap sent/failed"] == "100/0"
    summary = {r["run"]: r for r in summary_rows(result)}
    assert summary["targeted"]["cost reduction"] == "20.0%" and summary["random"]["cost reduction"] == "5.0%"
    assert summary["targeted"]["teacher $"] == "19.00"
    assert cluster_rows(result)[0]["example queries"].startswith("The licensee")
    [first] = comparison_rows(result)  # one iteration both runs reached: 10% vs 5% cut, quality unchanged
    cuts = (first["cost cut targeted"], first["cost cut random"], first["targeted / random"])
    assert cuts == ("10.0%", "5.0%", "2.00")
    assert first["goal (>= 1.5 x, >= -0.01)"] == "met"
    assert "Targeted vs random per iteration" in markdown(result, "c", "p.png")
    text = markdown(result, "routenlp coopt", "coopt_convergence.png")
    assert "400 requests sent during them, 3 failed" in text and "repository version 9" in text
    assert "died during swap to version 4 (targeted iteration 1), 3 of 40 requests failed: killed by SIGSEGV; ready again after 95.2 s" in text


def test_the_replayed_report_says_nothing_was_served():
    result = {
        "runs": {"targeted": [_row(0, 0.20, 1.0), {**_row(1, 0.18, 1.0), "swap": None}]},
        "clusters": {}, "server_crashes": [],
        "swap_totals": {"swaps": 0, "sent": 0, "failed": 0}, "dev_records": 600, "pool_records": 1000, "replayed": True,
        "promoted": {"from_version": 1, "build": "artifacts/x/coopt-replayed/targeted/iter1", "written": False},
    }  # fmt: skip
    text = markdown(result, "routenlp coopt --replay", "coopt_convergence.png")
    assert "(replayed over the portfolio pack)" in text and "Nothing is served" in text and "Live swaps" not in text
    assert "best build" in text and iteration_rows(result)[1]["swap sent/failed"] == "-"


def test_the_regression_gate_rejects_a_student_worse_on_any_task_beyond_the_tolerance():
    from types import SimpleNamespace

    from coopt.iteration import FinetuneSettings, IterationBuild

    build = SimpleNamespace(settings=FinetuneSettings(gate_tolerance=0.01))
    kept = IterationBuild.gate(build, {"a": 0.60, "b": 0.20}, {"a": 0.595, "b": 0.25})
    assert kept["kept"] and kept["worse_on"] == {}
    rejected = IterationBuild.gate(build, {"a": 0.60, "b": 0.20}, {"a": 0.55, "b": 0.30})
    assert not rejected["kept"] and rejected["worse_on"] == {"a": 0.05}
