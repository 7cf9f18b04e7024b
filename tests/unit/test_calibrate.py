"""Calibration of the serving rules (the utility's lambda, conformal risk control per tier, escalation targets)
from all-tier answers, their check on fresh data, the new BLS version and the CLI."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from export.calibrate import (
    CalibrationUnavailable,
    Rules,
    calibrate_answers,
    calibrate_build,
    check_pool,
    replay,
    write_calibrated_version,
)
from export.repository_builder import routenlp_model_spec
from routenlp_core.conformal import U_MAX
from routenlp_core.serving_config import SERVING_CONFIG_FILE, load_serving_config, write_serving_config
from routenlp_core.utility import UtilityRule

from .test_service import make_config

PRICES = {"t1": 0.01, "t2": 0.10, "t3": 0.80, "t4": 8.00}
STRUCTURED = frozenset({"cs_intent", "fin_ner", "legal_clause", "legal_risk"})
ALPHAS = dict.fromkeys(("cs_intent", "cs_response", "fin_ner", "fin_summary", "legal_clause", "legal_risk"), 0.05)
LABELS = ("fair", "unfair")


def world(n, seed, p_right=None, router=None, prefix="r"):
    """legal_risk records with a known error structure: T1 is wrong with probability 0.8 u (u its
    own uncertainty), T2/T3/T4 are right with fixed probabilities; the router's pass probabilities
    are constant per tier unless given. Returns (records, answers, probs)."""
    rng = np.random.default_rng(seed)
    p_right = p_right or {"t2": 0.3, "t3": 0.6, "t4": 0.9}
    router = router or {"t1": 0.6, "t2": 0.2, "t3": 0.4, "t4": 0.9}
    records, answers, probs = [], {}, {}
    for i in range(n):
        rid, target = f"{prefix}{i}", LABELS[i % 2]
        wrong = LABELS[(i + 1) % 2]
        u1 = float(rng.random())
        right = {"t1": rng.random() >= 0.8 * u1, **{t: rng.random() < p for t, p in p_right.items()}}
        us = {"t1": u1, "t2": float(rng.random()), "t3": float(rng.random()), "t4": float(rng.random())}
        records.append({"id": rid, "task": "legal_risk", "target": target})
        answers[rid] = {t: {"task": "legal_risk", "prediction": target if ok else wrong, "u": us[t], "quality": float(ok), "tokens": 100} for t, ok in right.items()}
        probs[rid] = dict(router)
    return records, answers, probs


def confidence_rule(lam: float) -> UtilityRule:
    """q_hat(T1) = T1's own confidence, q_hat(T4) = 0.9; T4 is 1000 x T1's price."""
    zero = [0.0] * 6
    weights = {"legal_risk": {"t1": [0.0, 0.0, 0.0, 0.0, 0.0, 1.0], "t2": zero, "t3": zero, "t4": [0.9, 0.0, 0.0, 0.0, 0.0, 0.0]}}
    return UtilityRule(lam, weights, {"legal_risk": {"t1": 0.001, "t2": 0.01, "t3": 0.1, "t4": 1.0}})


def test_replay_runs_the_served_decision_over_recorded_answers():
    records, answers, probs = world(1, 0)
    answers["r0"]["t1"]["u"] = 0.3
    rules = Rules({"legal_risk": {"t1": 0.5}}, {"legal_risk": {"t1": "t4"}}, confidence_rule(0.5), frozenset({"legal_risk"}))
    run = replay(records[0], answers, probs, rules, PRICES, STRUCTURED)
    # T1 answers first; q_hat 0.7 - 0.0005 beats T4's 0.9 - 0.5, and 0.3 <= delta 0.5: accepted
    assert [s.tier for s in run.outcome.stages] == ["t1"] and run.picked == "t1"
    answers["r0"]["t1"]["u"] = 0.9  # q_hat(T1) 0.1: the utility picks T4, T1's answer is dropped
    run = replay(records[0], answers, probs, rules, PRICES, STRUCTURED)
    assert [s.tier for s in run.outcome.stages] == ["t1", "t4"] and run.picked == "t4"
    assert run.outcome.cost == pytest.approx(0.1 * 0.01 + 0.1 * 8.0)
    answers["r0"]["t1"]["u"] = 0.45  # picked T1 again, but unsure past delta 0.4: its target answers
    rules.thresholds["legal_risk"]["t1"] = 0.4
    run = replay(records[0], answers, probs, rules, PRICES, STRUCTURED)
    assert [s.tier for s in run.outcome.stages] == ["t1", "t4"] and run.picked == "t1"


def test_calibrated_cascade_keeps_its_promise_on_fresh_data():
    """12 worlds: calibrate on 400 records, check on 1500 fresh ones. Learn then Test bounds the
    regret with probability >= 1 - epsilon (0.1) over calibration draws, so at most about one world
    in ten may run above alpha (here 1 of 12; with lambda and the targets chosen by the certified
    cascade itself it was 4 of 12, as many as conformal risk control's in-expectation bound gives);
    and T1 really accepts answers (the rule is not vacuous)."""
    realised, kept = [], []
    for seed in range(12):
        records, answers, probs = world(400, seed)
        rules, fit = calibrate_answers(records, answers, probs, PRICES, STRUCTURED, ALPHAS)
        fresh = world(1500, 100 + seed, prefix="f")
        cells, summary = check_pool("fresh", *fresh, rules, PRICES, STRUCTURED, ALPHAS, {"legal_risk": 0.5})
        for cell in cells:
            if cell.target is not None:
                assert cell.regret.wilson[0] <= 0.05 + 0.03, cell
        t1 = next(c for c in cells if c.tier == "t1")
        assert t1.regret.n > 200 and fit["cells"]["legal_risk"]["t1"]["guarantee"] == "ltt"
        if t1.target is not None:
            realised.append(t1.regret.risk)
            kept.append(1 - t1.escalated)
        # the oracle picks T1 where it is right (~62%); the promise makes the cascade escalate more
        assert 0.55 < summary["legal_risk"]["cheapest_agreement"] < 0.7 and 0 < summary["legal_risk"]["oracle_agreement"] < 1
    assert len(realised) >= 10  # T1 has a target (is not final) in most worlds
    assert sum(risk > 0.05 for risk in realised) <= 0.1 * len(realised) + 1
    assert np.mean(realised) >= 0.01 and np.mean(kept) > 0.3  # not trivially conservative either


def test_the_fit_part_chooses_lambda_and_targets_and_the_certify_part_only_fits_delta():
    from export.utility_router import UtilityRouting

    records, answers, probs = world(400, 7)
    routing = UtilityRouting(records, answers, probs, PRICES, ALPHAS)
    lam, _ = routing.fit_lambda(0.97)
    provisional, certified = routing.cascade(lam, provisional=True), routing.cascade(lam)
    assert certified.target == provisional.target  # the targets come from the fit part
    assert certified.fit["legal_risk"]["t1"]["n"] != provisional.fit["legal_risk"]["t1"]["n"]  # different records
    crc = UtilityRouting(records, answers, probs, PRICES, ALPHAS, guarantee="crc")
    assert crc.cascade(lam).fit["legal_risk"]["t1"]["guarantee"] == "crc"
    with pytest.raises(ValueError, match="guarantee"):
        UtilityRouting(records, answers, probs, PRICES, ALPHAS, guarantee="none").cascade(lam)


def test_the_cascade_escalates_only_to_a_tier_that_is_better_where_it_escalates():
    # T2 and T3 are worse than T1 everywhere; T4 is better: T1 goes to T4, never to T2/T3.
    records, answers, probs = world(400, 1, p_right={"t2": 0.1, "t3": 0.1, "t4": 0.95}, router={"t1": 0.6, "t2": 0.1, "t3": 0.1, "t4": 0.9})
    rules, fit = calibrate_answers(records, answers, probs, PRICES, STRUCTURED, ALPHAS)
    assert rules.escalate_to["legal_risk"]["t1"] == "t4"
    # no tier is better than T1: T1 is final, and accepts everything
    records, answers, _ = world(400, 2, p_right={"t2": 0.0, "t3": 0.0, "t4": 0.0})
    rules, fit = calibrate_answers(records, answers, None, PRICES, STRUCTURED, ALPHAS)
    assert rules.escalate_to["legal_risk"]["t1"] is None and rules.thresholds["legal_risk"]["t1"] == U_MAX
    assert fit["cells"]["legal_risk"]["t1"]["target"] is None


def test_a_tier_the_router_rarely_reaches_is_calibrated_on_the_whole_task_and_says_so():
    records, answers, probs = world(200, 3)
    rules, fit = calibrate_answers(records, answers, probs, PRICES, STRUCTURED, ALPHAS)
    # the router never picks T2 (p 0.2) and T1 escalates to T4: T2 sees no routed request
    assert fit["cells"]["legal_risk"]["t2"]["population"] == "whole task (only 0 routed)"
    assert fit["cells"]["legal_risk"]["t2"]["n"] == 133  # the certify two thirds of the 200


def test_too_few_calibration_answers_to_certify_anything_escalate_always():
    records, answers, _ = world(15, 4)  # n + 1 = 16 < 1 / alpha: no delta can be certified
    rules, fit = calibrate_answers(records, answers, None, PRICES, STRUCTURED, ALPHAS)
    assert rules.thresholds["legal_risk"]["t1"] == -math.inf
    assert fit["cells"]["legal_risk"]["t1"]["delta"] is None


def test_lambda_is_the_cheapest_setting_that_reaches_the_quality_target():
    from export.utility_router import UtilityRouting

    records, answers, probs = world(300, 5, router={"t1": 0.6, "t2": 0.2, "t3": 0.4, "t4": 0.9})
    routing = UtilityRouting(records, answers, probs, PRICES, ALPHAS)
    lam, info = routing.fit_lambda(0.97)
    t4_dollars = 0.1 * PRICES["t4"]
    # T1 alone is right ~60% of the time, T4 ~90%: reaching 0.97 x T4 needs T1's confident answers only
    assert info["met"] and info["fit_quality_ratio"] >= 0.97 and 0 < info["fit_dollars"] < t4_dollars
    loose, loose_info = routing.fit_lambda(0.5)
    assert loose >= lam and loose_info["fit_dollars"] <= info["fit_dollars"]  # a lower target never costs more
    _, none_info = routing.fit_lambda(2.0)
    assert not none_info["met"]


# ---------------------------------------------------------------- builds and repositories


class FakePools:
    def __init__(self, pools):
        self.pools = pools

    def flat(self, pool, limit_per_task=None):
        return self.pools[pool]


class FakeBuild:
    """What calibrate reads from export.pipeline.PortfolioBuild: root, profile, pools, answers (no router)."""

    def __init__(self, root: Path):
        from export.pipeline import PortfolioBuild
        from routenlp.portfolio import load_portfolio

        real = PortfolioBuild(load_portfolio(profile="tiny"), root=root, progress=False)
        self.root, self.profile, self.cache, self.load_answers, self.portfolio = root, real.profile, real.cache, real.load_answers, real.portfolio
        self.pools = FakePools({})
        (root / "router").mkdir(parents=True, exist_ok=True)
        (root / "router" / ".stage.json").write_text(json.dumps({"key": "k", "summary": {"bars": {"legal_risk": 0.5}}}))

    def write_answers(self, pool: str, records, answers) -> None:
        self.pools.pools[pool] = records
        (self.root / "answers").mkdir(exist_ok=True)
        with open(self.root / "answers" / f"{pool}.jsonl", "w") as handle:
            for record_id, by_tier in answers.items():
                for tier, row in by_tier.items():
                    handle.write(json.dumps({"id": record_id, "tier": tier, **row}) + "\n")


def test_calibrate_build_reads_the_calibration_answers(tmp_path):
    build = FakeBuild(tmp_path / "build")
    with pytest.raises(CalibrationUnavailable, match="calibration.jsonl not found"):
        calibrate_build(build)
    records, answers, _ = world(100, 6)
    build.write_answers("calibration", records, answers)
    thresholds, record = calibrate_build(build, alpha=0.1)
    assert record["status"] == "calibrated" and record["alpha"]["legal_risk"] == 0.1 and record["cells"]["legal_risk"]["t1"]["n"] == 100
    assert record["utility"] is None and record["cascade_first"] == []  # no router in this build
    assert set(thresholds["legal_risk"]) == {"t1", "t2", "t3"} and "escalation_baseline" in record


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
    # the tokenizer is the latest version's; the adapter and code snapshot this checkout's (they read the new rules)
    from export.repository_builder import ROUTENLP_BLS

    assert (version_dir / "model.py").read_text() == ROUTENLP_BLS.read_text() and (version_dir / "tokenizer" / "tokenizer.json").exists()
    assert (version_dir / "code" / "routenlp_core" / "utility.py").read_text() == (Path(__file__).parents[2] / "routenlp_core" / "utility.py").read_text()
    new = load_serving_config(version_dir)
    assert new.thresholds == thresholds and new.calibration["alpha"] == 0.05
    assert new.repository_version == 1  # still routes to the models of version 1
    old = load_serving_config(repo / "routenlp" / "1")
    assert old.thresholds == make_config().thresholds  # versions are immutable
    assert 'name: "routenlp"' in (repo / "routenlp" / "config.pbtxt").read_text()
    assert not list((repo / "routenlp").glob(".staging-*"))


def test_calibrated_version_refuses_unknown_tasks_and_missing_models(tmp_path):
    from routenlp_core.serving_config import ServingConfigError

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
    build.write_answers("calibration", *world(100, 1)[:2])
    build.write_answers("dev", *world(100, 2, prefix="d")[:2])
    monkeypatch.setattr("export.pipeline.PortfolioBuild.pools", build.pools)
    repo = make_repository(tmp_path)

    parser = argparse.ArgumentParser()
    calibrate_cmd.register(parser.add_subparsers())
    results = tmp_path / "calibration.json"
    args = parser.parse_args(["calibrate", "--profile", "tiny", "--repository", str(repo), "--results", str(results)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("pool"))
    assert header.split() == ["pool", "task", "tier", "target", "alpha", "n", "regret", "wilson95", "escalated", "wrong_accepted", "status"]
    assert "legal_risk" in out and "routenlp/2" in out
    assert {row["tier"] for row in json.loads(results.read_text())["rows"]} >= {"t1"}
    assert load_serving_config(repo / "routenlp" / "2").calibration["alpha"]["legal_risk"] == 0.05

    dry = parser.parse_args(["calibrate", "--profile", "tiny", "--repository", str(repo), "--results", str(results), "--dry-run"])
    assert dry.handler(dry) == 0 and not (repo / "routenlp" / "3").exists()
    bad = parser.parse_args(["calibrate", "--profile", "tiny", "--repository", str(repo), "--alpha", "1.5"])
    assert bad.handler(bad) == 2
