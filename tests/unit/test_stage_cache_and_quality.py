import numpy as np

from export.quality import UNSERVABLE, quality_matrix, quality_table
from export.report import ordering_issues
from export.stage_cache import StageCache, fingerprint


def test_stage_cache_rebuilds_only_when_inputs_change(tmp_path):
    cache, calls = StageCache(tmp_path), []

    def build(out):
        calls.append(out)
        (out / "artefact").write_text("x")
        return {"n": len(calls)}

    assert cache.run("step", {"a": 1}, build, log=lambda m: None) == {"n": 1}
    assert cache.run("step", {"a": 1}, build, log=lambda m: None) == {"n": 1}  # cached
    assert cache.run("step", {"a": 2}, build, log=lambda m: None) == {"n": 2}  # input changed
    assert len(calls) == 2 and (tmp_path / "step" / "artefact").exists()
    assert cache.build_seconds("step") is not None and cache.build_seconds("step") >= 0  # kept for cached runs
    assert cache.build_seconds("never-built") is None


def test_failed_step_leaves_no_stamp(tmp_path):
    cache = StageCache(tmp_path)

    def fail(out):
        raise RuntimeError("boom")

    try:
        cache.run("step", {"a": 1}, fail, log=lambda m: None)
    except RuntimeError:
        pass
    assert cache.stamp("step") is None


def test_trusted_stage_is_kept_when_only_code_differs_and_says_which(tmp_path):
    """A stage seeded from a pack: other code -> kept with a note; another setting -> rebuilt."""
    calls, logs = [], []

    def build(out):
        calls.append(out)
        return {"n": len(calls)}

    built = {"step": "s", "profile": {"epochs": 2}, "code": "ab", "code_modules": {"export.t1": "aaa", "export.training": "bbb"}}
    StageCache(tmp_path).run("step", built, build, log=logs.append)
    assert StageCache(tmp_path).key("step") == fingerprint({k: v for k, v in built.items() if k != "code_modules"})  # keys as before
    edited = {**built, "code": "cb", "code_modules": {"export.t1": "ccc", "export.training": "bbb"}}
    assert StageCache(tmp_path, trust_code=True).run("step", edited, build, log=logs.append) == {"n": 1}
    assert len(calls) == 1 and "export.t1" in logs[-1] and "export.training" not in logs[-1], logs[-1]
    retuned = {**edited, "profile": {"epochs": 3}}
    assert StageCache(tmp_path, trust_code=True).run("step", retuned, build, log=logs.append) == {"n": 2}
    assert StageCache(tmp_path).run("step", edited, build, log=logs.append) == {"n": 3}  # untrusted: code change rebuilds


def _answers():
    # Two cs_intent records (T1 serves them), one cs_response record (no T1).
    return {
        "a": {"t1": {"prediction": "x", "quality": 1.0}, "t2": {"prediction": "y", "quality": 0.0}, "t3": {"prediction": "x", "quality": 1.0}, "t4": {"prediction": "x", "quality": 1.0}},
        "b": {"t1": {"prediction": "x", "quality": 0.0}, "t2": {"prediction": "y", "quality": 1.0}, "t3": {"prediction": "y", "quality": 1.0}, "t4": {"prediction": "y", "quality": 1.0}},
        "c": {"t2": {"prediction": "hello", "quality": 0.2}, "t3": {"prediction": "hello there", "quality": 0.5}, "t4": {"prediction": "hello there friend", "quality": 0.9}},
    }


RECORDS = [
    {"id": "a", "task": "cs_intent", "target": "x"},
    {"id": "b", "task": "cs_intent", "target": "y"},
    {"id": "c", "task": "fin_summary", "target": "hello there friend"},
]


def test_quality_matrix_marks_unservable_tiers():
    quality, bars = quality_matrix(_answers(), RECORDS, {"cs_intent": 0.9, "fin_summary": 0.4})
    assert quality.shape == (3, 4)
    assert quality[2, 0] == UNSERVABLE and quality[2, 3] == np.float32(0.9)
    assert bars.tolist() == [np.float32(0.9), np.float32(0.9), np.float32(0.4)]


def test_quality_table_uses_the_task_metric():
    table = quality_table(_answers(), RECORDS)
    # cs_intent macro-F1: t4 predicts x,y for refs x,y -> 1.0; t2 predicts y,y -> F1(x)=0, F1(y)=2/3 -> 1/3
    assert table["cs_intent"]["t4"] == 1.0
    assert abs(table["cs_intent"]["t2"] - 1 / 3) < 1e-3
    assert "t1" not in table["fin_summary"] and table["fin_summary"]["t4"] == 1.0


def test_ordering_issues_name_inverted_tiers():
    assert ordering_issues({"cs_intent": {"t1": 0.5, "t2": 0.4, "t3": 0.6, "t4": 0.7}}) == ["cs_intent: t2 (0.400) < t1 (0.500)"]
    assert ordering_issues({"fin_ner": {"t2": 0.1, "t3": 0.2, "t4": 0.3}}) == []


def test_answers_are_one_step_per_tier_and_a_changed_tier_relabels_alone(tmp_path, monkeypatch):
    from export.pipeline import PortfolioBuild
    from routenlp.portfolio import load_portfolio

    build = PortfolioBuild(load_portfolio(profile="tiny"), root=tmp_path, progress=False, log=lambda m: None)
    labelled = []

    class Row:
        def __init__(self, tier, pool):
            self.tier, self.pool = tier, pool

        def to_json(self):
            return {"id": f"{self.pool}-1", "tier": self.tier}

    def fake_label(tier, pool):
        labelled.append((tier, pool))
        return [Row(tier, pool)]

    keys = {"t1": "k1", "t2": "k2", "t3": "k3", "t4": "k4"}
    monkeypatch.setattr(build, "_label", fake_label)
    monkeypatch.setattr(build.cache, "key", lambda name: keys.get(name.split("/")[-1]) or StageCache.key(build.cache, name))
    monkeypatch.setattr(build, "decoder_key", lambda tier: keys[tier])
    monkeypatch.setattr("export.pipeline._code_fingerprint", lambda *m: "code")
    monkeypatch.setattr("export.pipeline._benchmark_fingerprint", lambda: "bench")
    build.build_answers()
    assert len(labelled) == 4 * 3
    assert [row["tier"] for row in build.load_answers("dev")["dev-1"].values()] == ["t1", "t2", "t3", "t4"]
    labelled.clear()
    keys["t3"] = "k3-changed"
    build.build_answers()
    assert {tier for tier, _ in labelled} == {"t3"}


def test_pack_stage_without_recorded_inputs_is_trusted_only_when_restored(tmp_path):
    """Pack v1's stages predate the inputs record: after restore_pack (trust_code) a checkout whose
    step code moved must still serve them, not retrain for an hour; an untrusted cache rebuilds."""
    import json

    calls, logs = [], []

    def build(out):
        calls.append(out)
        return {"n": len(calls)}

    inputs = {"step": "s", "profile": {"epochs": 2}, "code": "ab"}
    StageCache(tmp_path).run("step", inputs, build, log=logs.append)
    stamp_path = tmp_path / "step" / ".stage.json"
    stamp = json.loads(stamp_path.read_text())
    stamp.pop("inputs")
    stamp_path.write_text(json.dumps(stamp))
    moved = {**inputs, "code": "moved"}
    assert StageCache(tmp_path, trust_code=True).run("step", moved, build, log=logs.append) == {"n": 1}
    assert len(calls) == 1 and "not recorded" in logs[-1]
    assert StageCache(tmp_path).run("step", moved, build, log=logs.append) == {"n": 2}


def test_helper_code_hashes_count_as_code_for_a_trusted_stage(tmp_path):
    """T3/T4 stamps hold upcycle_code / grow_code: an edit of those modules is a code change."""
    calls, logs = [], []

    def build(out):
        calls.append(out)
        return {"n": len(calls)}

    inputs = {"step": "decoder", "code": "ab", "code_modules": {"export.decoder": "a"}, "grow_code": "g1", "lr": 0.001}
    StageCache(tmp_path).run("t4", inputs, build, log=logs.append)
    assert StageCache(tmp_path, trust_code=True).run("t4", {**inputs, "grow_code": "g2"}, build, log=logs.append) == {"n": 1}
    assert "grow_code" in logs[-1]
    assert StageCache(tmp_path, trust_code=True).run("t4", {**inputs, "grow_code": "g2", "lr": 0.01}, build, log=logs.append) == {"n": 2}
