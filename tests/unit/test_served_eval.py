"""Scoring served answers (clients/served_eval.py) and the route command's request file, offline."""

import json

import pytest

from clients.served_eval import ServedAnswer, compare, prediction_from_output, summarize
from routenlp.cli import main


def _answer(task, target, output, tier="t1", cost=0.001, ms=10.0, error=None, escalations=0, sla_met=True):
    meta = None if error else {"tier": tier, "cost_usd": cost, "escalations": escalations, "fallback": None, "sla_met": sla_met}
    return ServedAnswer({"task": task, "target": target}, output, meta, ms, error)


def test_outputs_turn_back_into_predictions():
    assert prediction_from_output("cs_intent", json.dumps({"label": "card_arrival"})) == "card_arrival"
    assert prediction_from_output("fin_ner", json.dumps({"entities": [], "tags": ["O", "I-ORG"]})) == ["O", "I-ORG"]
    assert prediction_from_output("fin_summary", "revenue rose") == "revenue rose"


def test_summary_scores_mixes_and_counts_a_failed_request_as_wrong():
    answers = [
        _answer("legal_risk", "high", json.dumps({"label": "high"}), "t1", 0.001, 10),
        _answer("legal_risk", "low", json.dumps({"label": "high"}), "t2", 0.01, 30, escalations=1),
        _answer("legal_risk", "low", None, error="UNAVAILABLE: no tier"),
        _answer("legal_risk", "low", json.dumps({"label": "low"}), "t1", 0.001, 20, sla_met=False),
    ]
    summary = summarize(answers)
    assert summary["requests"] == 4 and summary["errors"] == 1
    assert summary["quality"]["legal_risk"] == pytest.approx(0.5)  # 2 right of 4: the failure counts
    assert summary["mix"] == {"t1": pytest.approx(2 / 3, abs=1e-4), "t2": pytest.approx(1 / 3, abs=1e-4), "t3": 0.0, "t4": 0.0}
    assert summary["dollars"] == pytest.approx(0.012) and summary["escalation_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert summary["p50_ms"] == 20.0 and summary["sla_violation"] == pytest.approx(1 / 3, abs=1e-4)


def test_ratios_are_of_macro_averages_and_total_dollars():
    system = {"mean_quality": 0.45, "dollars": 1.0}
    reference = {"mean_quality": 0.5, "dollars": 20.0}
    assert compare(system, reference) == {"quality_ratio": 0.9, "cost_ratio": 0.05}
    assert compare(system, {"mean_quality": 0.0, "dollars": 0.0}) == {"quality_ratio": None, "cost_ratio": None}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["route"], "give either a text (with --task) or --file"),
        (["route", "hello"], "--task is required with a text"),
        (["route", "--file", "{path}"], "need an object with \"task\" and \"text\""),
    ],
)
def test_route_command_refuses_bad_arguments_before_connecting(argv, message, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "no task"}) + "\n")
    assert main([a.replace("{path}", str(path)) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_log_tail_names_a_missing_log(tmp_path, capsys):
    assert main(["log", "tail", "--db", str(tmp_path / "none.sqlite")]) == 1
    assert "no escalation log" in capsys.readouterr().err


def test_service_times_collect_stage_latencies_per_tier():
    from clients.served_eval import service_times

    ok = _answer("legal_risk", "low", json.dumps({"label": "low"}))
    ok.metadata["latency_ms"] = {"t1": 1.5, "t2": 20.0}
    failed = _answer("legal_risk", "low", None, error="UNAVAILABLE")
    assert service_times([ok, failed]) == {"t1": [1.5], "t2": [20.0], "t3": [], "t4": []}
