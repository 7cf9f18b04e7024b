"""Conformal thresholds from calibration answers, their dev check, the new BLS version and the CLI."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from bls_router.calibrate import (
    baseline_escalation_rates,
    CalibrationUnavailable,
    calibrate_build,
    escalation_targets,
    check_on,
    scores_by_task_tier,
    thresholds_from_answers,
    write_calibrated_version,
)
from bls_router.conformal import conformal_delta
from bls_router.serving_config import SERVING_CONFIG_FILE, load_serving_config, write_serving_config
from export.repository_builder import routenlp_model_spec
from routenlp.metrics import wilson_interval

from .test_service import make_config

BARS = {"cs_intent": 0.5, "fin_summary": 0.3}


def answers_for(rows):
    """id -> tier -> row, the shape PortfolioBuild.load_answers returns."""
    table, seen = {}, {}
    for task, tier, u, quality in rows:
        index = seen[(task, tier)] = seen.get((task, tier), -1) + 1  # n-th answer of this tier = n-th record
        table.setdefault(f"{task}:{index}", {})[tier] = {"task": task, "tier": tier, "u": u, "quality": quality}
    return table


def synthetic(n=40, seed=0):
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        for tier in ("t1", "t2", "t3", "t4"):
            u = rng.random()
            # higher u, more likely wrong
            rows.append(("cs_intent", tier, round(u, 4), 1.0 if rng.random() > u else 0.0))
    return rows


def test_correct_means_quality_reaches_the_bar():
    answers = answers_for([("cs_intent", "t1", 0.1, 0.5), ("cs_intent", "t2", 0.2, 0.49), ("fin_summary", "t2", 0.3, 0.31)])
    scores = scores_by_task_tier(answers, BARS)
    assert scores[("cs_intent", "t1")] == ([0.1], [True])
    assert scores[("cs_intent", "t2")] == ([0.2], [False])
    assert scores[("fin_summary", "t2")] == ([0.3], [True])


def test_thresholds_are_conformal_deltas_for_tiers_that_escalate():
    rows = synthetic()
    thresholds, counts = thresholds_from_answers(answers_for(rows), BARS, alpha=0.05)
    assert set(thresholds["cs_intent"]) == {"t1", "t2", "t3"}  # a T4 answer is final: no threshold
    for tier in ("t1", "t2", "t3"):
        us = [u for task, t, u, q in rows if t == tier]
        oks = [q >= BARS["cs_intent"] for task, t, u, q in rows if t == tier]
        assert thresholds["cs_intent"][tier] == conformal_delta(us, oks, 0.05).delta
        assert counts["cs_intent"][tier] == {"n": len(us), "correct": sum(oks)}
    looser, _ = thresholds_from_answers(answers_for(rows), BARS, alpha=0.3)
    assert all(looser["cs_intent"][t] <= thresholds["cs_intent"][t] for t in ("t1", "t2", "t3"))


def test_tier_with_no_correct_answer_is_never_trusted():
    thresholds, _ = thresholds_from_answers(answers_for([("cs_intent", "t1", 0.1, 0.0)] * 5), BARS, 0.05)
    assert thresholds["cs_intent"]["t1"] == -math.inf


def test_dev_check_counts_wrong_and_accepted_with_wilson_interval():
    thresholds = {"cs_intent": {"t1": 0.5}}
    dev = answers_for(
        [
            ("cs_intent", "t1", 0.1, 0.0),  # wrong, accepted: a violation
            ("cs_intent", "t1", 0.2, 1.0),  # right, accepted
            ("cs_intent", "t1", 0.9, 0.0),  # wrong, escalated
            ("cs_intent", "t1", 0.4, 1.0),  # right, accepted
        ]
    )
    (row,) = check_on(dev, thresholds, BARS, {"cs_intent": {"t1": {"n": 10, "correct": 7}}})
    assert (row.n_dev, row.violation, row.escalation_rate) == (4, 0.25, 0.25)
    assert row.wilson == wilson_interval(1, 4) and (row.n_calibration, row.n_correct) == (10, 7)
    assert row.status(0.05) == "above alpha (within CI)"
    table_row = row.as_table_row(0.05)
    assert table_row["delta"] == "0.5000" and table_row["wilson95"].startswith("[0.")


def test_check_status_flags_clear_violations():
    thresholds = {"cs_intent": {"t1": 1.0}}
    dev = answers_for([("cs_intent", "t1", 0.1, 0.0)] * 40)
    (row,) = check_on(dev, thresholds, BARS)
    assert row.violation == 1.0 and row.status(0.05) == "VIOLATED"


# ---------------------------------------------------------------- builds and repositories


class FakeBuild:
    """What calibrate reads from export.pipeline.PortfolioBuild: root, profile, cache stamps, answers."""

    def __init__(self, root: Path, bars=BARS):
        from export.pipeline import PortfolioBuild
        from routenlp.portfolio import load_portfolio

        real = PortfolioBuild(load_portfolio(profile="tiny"), root=root, progress=False)
        self.root, self.profile, self.cache, self.load_answers, self.pools = root, real.profile, real.cache, real.load_answers, real.pools
        (root / "router").mkdir(parents=True, exist_ok=True)
        (root / "router" / ".stage.json").write_text(json.dumps({"key": "k", "summary": {"bars": bars}}))

    def write_answers(self, pool: str, rows) -> None:
        (self.root / "answers").mkdir(exist_ok=True)
        with open(self.root / "answers" / f"{pool}.jsonl", "w") as handle:
            for record_id, by_tier in answers_for(rows).items():
                for row in by_tier.values():
                    handle.write(json.dumps({"id": record_id, **row}) + "\n")


def test_calibrate_build_reads_the_calibration_answers(tmp_path):
    build = FakeBuild(tmp_path / "build")
    with pytest.raises(CalibrationUnavailable, match="calibration.jsonl not found"):
        calibrate_build(build)
    build.write_answers("calibration", synthetic())
    thresholds, record = calibrate_build(build, alpha=0.1)
    assert record["status"] == "calibrated" and record["alpha"] == 0.1 and record["counts"]["cs_intent"]["t1"]["n"] == 40
    assert thresholds == thresholds_from_answers(build.load_answers("calibration"), BARS, 0.1)[0]
    assert record["escalation_baseline"] == {}  # no router in this build: no baseline, no alerts


def test_baseline_escalation_rate_is_the_share_of_first_tiers_above_their_threshold():
    answers = {
        "a": {"t1": {"task": "fin_ner", "u": 0.5}, "t4": {"task": "fin_ner", "u": 0.9}},
        "b": {"t1": {"task": "fin_ner", "u": 0.1}},
        "c": {"t2": {"task": "fin_ner", "u": 0.4}},
        "d": {"t4": {"task": "fin_ner", "u": 0.99}},  # T4 is final: never escalates
        "e": {"t2": {"task": "cs_response", "u": 0.3}},  # t2 has no threshold here: accepted
    }
    thresholds = {"fin_ner": {"t1": 0.2, "t2": 0.3}}
    starts = {"a": "t1", "b": "t1", "c": "t2", "d": "t4", "e": "t2", "missing": "t1"}
    assert baseline_escalation_rates(answers, starts, thresholds) == {"cs_response": 0.0, "fin_ner": 0.5}


def _clause_answers(rows):
    """Calibration records and answers: rows of (target, {tier: (prediction, u)})."""
    records, answers = [], {}
    for i, (target, by_tier) in enumerate(rows):
        records.append({"id": f"c{i}", "task": "legal_risk", "target": target})
        answers[f"c{i}"] = {tier: {"task": "legal_risk", "prediction": p, "u": u, "quality": float(p == target)} for tier, (p, u) in by_tier.items()}
    return records, answers


def test_escalation_goes_to_the_cheapest_tier_that_beats_the_uncertain_answers():
    # T1 is right when confident (u 0.1) and wrong when not (u 0.9); on those, T2 is wrong too and
    # T3 is right: T1 escalates to T3. T2's uncertain answers are beaten by nothing: accept.
    confident = [("fair", {"t1": ("fair", 0.1), "t2": ("fair", 0.1), "t3": ("fair", 0.1), "t4": ("unfair", 0.1)})] * 6
    unsure = [("unfair", {"t1": ("fair", 0.9), "t2": ("fair", 0.9), "t3": ("unfair", 0.2), "t4": ("fair", 0.1)})] * 4
    records, answers = _clause_answers(confident + unsure)
    thresholds = {"legal_risk": {"t1": 0.5, "t2": 0.5, "t3": 0.5}}
    targets = escalation_targets(answers, records, thresholds)
    assert targets == {"legal_risk": {"t1": "t3", "t2": "t3", "t3": None}}
    # nothing escalates from T3 (all u <= 0.5): the whole task decides, where T4 is worse
    assert escalation_targets(answers, records, {})["legal_risk"]["t3"] is None
    # records missing a tier's answer are left out; a task with none gets no entry
    assert escalation_targets({}, records, thresholds) == {}


def test_baseline_escalation_rate_counts_no_escalation_where_no_tier_is_better():
    answers = {"a": {"t1": {"task": "fin_ner", "u": 0.5}}, "b": {"t1": {"task": "fin_ner", "u": 0.1}}}
    thresholds = {"fin_ner": {"t1": 0.2}}
    assert baseline_escalation_rates(answers, {"a": "t1", "b": "t1"}, thresholds, {"fin_ner": {"t1": None}}) == {"fin_ner": 0.0}
    assert baseline_escalation_rates(answers, {"a": "t1", "b": "t1"}, thresholds, {"fin_ner": {"t1": "t4"}}) == {"fin_ner": 0.5}


def make_repository(root: Path) -> Path:
    """A repository holding routenlp version 1 as the export writes it."""
    from export.repository import write_model_version

    source = root / "src"
    (source / "tokenizer").mkdir(parents=True)
    (source / "tokenizer" / "tokenizer.json").write_text("{}")
    (source / "model.py").write_text("# adapter\n")
    write_serving_config(make_config(repository_version=1), source / SERVING_CONFIG_FILE)
    repo = root / "repo"
    write_model_version(
        repo,
        routenlp_model_spec(),
        {"model.py": source / "model.py", "tokenizer": source / "tokenizer", SERVING_CONFIG_FILE: source / SERVING_CONFIG_FILE},
        version=1,
    )
    return repo


def test_new_thresholds_go_into_a_new_routenlp_version(tmp_path):
    repo = make_repository(tmp_path)
    thresholds = {"cs_intent": {"t1": 0.2, "t2": -math.inf}}
    version_dir = write_calibrated_version(repo, thresholds, {"status": "calibrated", "alpha": 0.05})
    assert version_dir == repo / "routenlp" / "2"
    assert (version_dir / "model.py").read_text() == "# adapter\n" and (version_dir / "tokenizer" / "tokenizer.json").exists()
    new = load_serving_config(version_dir)
    assert new.thresholds == thresholds and new.calibration["alpha"] == 0.05
    assert new.repository_version == 1  # still routes to the models of version 1
    old = load_serving_config(repo / "routenlp" / "1")
    assert old.thresholds == make_config().thresholds  # versions are immutable
    assert 'name: "routenlp"' in (repo / "routenlp" / "config.pbtxt").read_text()
    assert not list((repo / "routenlp").glob(".staging-*"))


def test_calibrated_version_refuses_unknown_tasks_and_missing_models(tmp_path):
    from bls_router.serving_config import ServingConfigError

    repo = make_repository(tmp_path)
    with pytest.raises(ServingConfigError, match="thresholds for unknown task 'nope'"):
        write_calibrated_version(repo, {"nope": {"t1": 0.1}}, {})
    assert not (repo / "routenlp" / "2").exists()
    with pytest.raises(CalibrationUnavailable, match="has no version"):
        write_calibrated_version(tmp_path / "empty", {}, {})


def test_calibrate_command_prints_the_table_and_writes_a_version(tmp_path, monkeypatch, capsys):
    from routenlp.commands import calibrate_cmd

    monkeypatch.setattr("export.pipeline.ARTIFACTS_DIR", tmp_path / "artifacts")
    build = FakeBuild(tmp_path / "artifacts" / "default-tiny")
    build.write_answers("calibration", synthetic(seed=1))
    build.write_answers("dev", synthetic(seed=2))
    repo = make_repository(tmp_path)

    parser = argparse.ArgumentParser()
    calibrate_cmd.register(parser.add_subparsers())
    results = tmp_path / "calibration.json"
    args = parser.parse_args(["calibrate", "--profile", "tiny", "--repository", str(repo), "--results", str(results)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("task"))
    assert header.split() == ["task", "tier", "n_cal", "correct", "delta", "n_dev", "violation", "wilson95", "escalate", "status"]
    assert "cs_intent" in out and "routenlp/2" in out
    assert len(json.loads(results.read_text())["rows"]) == 3
    assert load_serving_config(repo / "routenlp" / "2").calibration["alpha"] == 0.05

    dry = parser.parse_args(["calibrate", "--profile", "tiny", "--repository", str(repo), "--results", str(results), "--dry-run"])
    assert dry.handler(dry) == 0 and not (repo / "routenlp" / "3").exists()
    bad = parser.parse_args(["calibrate", "--profile", "tiny", "--repository", str(repo), "--alpha", "1.5"])
    assert bad.handler(bad) == 2
