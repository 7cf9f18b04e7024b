"""The co-optimization loop replayed over the tiny build's recorded answers (`routenlp coopt --replay`):
no server, but the failures, the T4 teacher answers, the fine-tuned tiers, the refreshed answers and
the retrained router are real, and each iteration is measured by the serving code's replay on dev."""

from __future__ import annotations

import pytest

from coopt.loop import CooptSettings, State
from coopt.replayed import ReplayedLoop
from export.calibrate import build_prices

pytestmark = pytest.mark.integration


def test_one_targeted_iteration_replayed_on_the_tiny_build(tiny_build, tmp_path):
    loop = ReplayedLoop(tiny_build, CooptSettings(max_iterations=1, epsilon=0.0), tmp_path, log=lambda _: None)
    result = loop.run(("targeted",))
    base, first = result["runs"]["targeted"]
    assert base["cost_ratio"] > 0 and first["cost_ratio"] > 0 and first["quality_ratio"] > 0
    assert first["failures"] > 0 and first["clusters_used"] > 0 and first["distilled"]["asked_teacher"] > 0
    assert result["promoted"]["written"] is False and result["swaps"] == []
    # Always-T4 replayed is T4's recorded answers billed at T4's price: the teacher's price too
    answers = tiny_build.load_answers("dev")
    t4 = sum(int(answers[r["id"]]["t4"].get("tokens", 0)) for r in loop.dev) / 1000.0 * build_prices(tiny_build)["t4"]
    assert result["reference"]["dollars"] == pytest.approx(t4, rel=1e-6)
    teacher = loop.teacher(State(tiny_build, 0), loop.pool[:3])
    assert all(a.error is None and a.dollars > 0 for a in teacher)
    # the iteration's build really retrained: its router is its own, not the base's
    iteration = tmp_path / "targeted" / "iter1"
    assert (iteration / "router" / "router.safetensors").exists() and not (iteration / "router").is_symlink()


def test_students_failing_the_calibration_gate_keep_their_parents_weights(tiny_build, tmp_path):
    """A gate no student can pass (it must gain more than 1.0 on every calibration task): every
    distilled student stays its parent, so the iteration answers exactly as the base build."""
    from coopt.iteration import FinetuneSettings
    from export.stage_cache import StageCache

    settings = CooptSettings(max_iterations=1, epsilon=0.0, finetune=FinetuneSettings(gate_tolerance=-1.0))
    ReplayedLoop(tiny_build, settings, tmp_path, log=lambda _: None).run(("targeted",))
    iteration = tmp_path / "targeted" / "iter1"
    cache = StageCache(iteration)
    t2, t1 = cache.stamp("decoders/t2")["summary"], cache.stamp("t1")["summary"]
    gated = ([t2] if t2.get("examples") else []) + [row for row in t1.values() if "gate" in row]
    assert gated and all(row["gate"]["kept"] is False and row["gate"]["worse_on"] for row in gated)
    assert (iteration / "decoders" / "t2" / "model.safetensors").read_bytes() == (tiny_build.decoder_dir("t2") / "model.safetensors").read_bytes()
    for task in t1:
        assert (iteration / "t1" / task / "model.safetensors").read_bytes() == (tiny_build.root / "t1" / task / "model.safetensors").read_bytes()
    assert cache.stamp("answers")["summary"]["dev"]["answered_again"] == 0


def test_distilled_t1_heads_do_not_depend_on_what_ran_before_in_the_process(tiny_build, tmp_path, monkeypatch):
    """A distilled T1 head is the same whatever the process drew from the global RNG before (its
    dropout did depend on it, and what ran before depended on which stages were cached: targeted
    iteration 1 on the default pack gave three different costs from the same inputs)."""
    import torch

    import export.t1
    from coopt.distill import Distillation, Example
    from coopt.iteration import IterationBuild

    records = tiny_build.pools.router["cs_intent"][:12]
    distillation = Distillation(examples=[Example(dict(r), "t1", 1.0, 0.0) for r in records], trained_on={"t1": {r["id"] for r in records}})
    load_t1 = export.t1.load_t1
    for draws in (1, 5):  # a different global RNG history right before each head is fine-tuned
        monkeypatch.setattr(export.t1, "load_t1", lambda *a, _n=draws, **k: (torch.rand(_n), load_t1(*a, **k))[1])
        summary = IterationBuild(tiny_build, tmp_path / str(draws), distillation, bars={}, progress=False, log=lambda _: None).build_t1()
        assert summary["cs_intent"]["examples"] == 12
    first, second = (tmp_path / str(d) / "t1" / "cs_intent" / "model.safetensors" for d in (1, 5))
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != (tiny_build.root / "t1" / "cs_intent" / "model.safetensors").read_bytes()
