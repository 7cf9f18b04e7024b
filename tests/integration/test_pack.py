"""Portfolio packs (export/pack.py): written from the tiny build here (CI does not depend on the
committed default pack), checked file by file, restored into a fresh artifact folder without any
training even when a step's code differs, and served through tritonserver: the served answers on a
seeded, stratified dev sample give the quality the pack's manifest records.

The committed default pack (packs/default-default/) gets the same checks, marked slow, when it exists.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from export.pack import (
    MANIFEST,
    MAX_PACK_BYTES,
    PACKS_DIR,
    PackError,
    mismatches,
    restore_pack,
    sha256_file,
    verify_pack,
    write_pack,
)
from export.pipeline import PortfolioBuild
from export.quality import quality_table
from export.report import portfolio_report
from routenlp.portfolio import load_portfolio
from routenlp_core.paths import BENCHMARK_DIR
from routenlp_core.tasks import TASK_NAMES, get_task

pytestmark = pytest.mark.integration

DEFAULT_PACK = PACKS_DIR / "default-default"
SAMPLE_PER_TASK = 12
# Served (vLLM / ONNX Runtime in Triton) vs recorded (transformers / torch at build time) quality on
# the same sampled records: both are greedy fp32, so they differ only where two tokens' logits tie
# within float error. Per task and tier at most 0.15 (one or two of 12 answers); over all of them
# the mean absolute difference at most 0.03.
MAX_TASK_TIER_GAP = 0.15
MAX_MEAN_GAP = 0.03
START_TIMEOUT_S = 600  # the T4 endpoint and Triton's two vLLM engines start together on 2 shared cores


@pytest.fixture(scope="module")
def tiny_pack(tiny_build, tmp_path_factory) -> Path:
    report = portfolio_report(tiny_build, tiny_build.steps, {}, tiny_build.load_answers("dev"))
    path = tmp_path_factory.mktemp("packs") / "default-tiny"
    write_pack(tiny_build, report, path)
    return path


@pytest.fixture(scope="module", params=[pytest.param("tiny", id="tiny-pack-built-here"), pytest.param("default", marks=pytest.mark.slow, id="committed-default-pack")])
def pack(request) -> Path:
    if request.param == "tiny":
        return request.getfixturevalue("tiny_pack")
    if not (DEFAULT_PACK / MANIFEST).exists():
        pytest.skip(f"no committed default pack at {DEFAULT_PACK}")
    return DEFAULT_PACK


def _build_over(pack: Path, root: Path, log=lambda message: None) -> PortfolioBuild:
    profile = json.loads((pack / MANIFEST).read_text())["portfolio"]["profile"]["name"]
    return PortfolioBuild(load_portfolio(profile=profile), root=root, progress=False, log=log)


def test_pack_manifest_records_the_build(pack):
    manifest = verify_pack(pack)  # every file present with its sha256, nothing extra, under 100 MB
    assert manifest["total_bytes"] == sum(f["bytes"] for f in manifest["files"].values()) <= MAX_PACK_BYTES
    assert manifest["data"]["manifest_sha256"] == sha256_file(BENCHMARK_DIR / "manifest.json")
    assert manifest["data"]["files"]["cs_intent/dev.jsonl"] == sha256_file(BENCHMARK_DIR / "cs_intent" / "dev.jsonl")
    assert len(manifest["git"]["commit"]) == 40 and manifest["built_at"].endswith("Z")
    assert mismatches(manifest, load_portfolio(profile=manifest["portfolio"]["profile"]["name"])) == []
    for stage in ("tokenizer", "t1", "decoders/t4", "answers", "router", "router_ablations", "onnx"):
        assert manifest["stages"][stage]["key"], stage
    # per-module code hashes, recorded by every stage built since stamps carry their inputs (the
    # default pack v1's tokenizer, T1 and decoder stages predate that and record none)
    recorded = {name: stage["inputs"] for name, stage in manifest["stages"].items() if stage.get("inputs")}
    assert recorded["router"]["code_modules"]
    assert all(len(h) == 16 for inputs in recorded.values() for h in inputs.get("code_modules", {}).values())
    for name in ("tokenizer/tokenizer.json", "decoders/t2/model.safetensors", "decoders/t4/config.json", "onnx/router.onnx", "answers/dev.jsonl", "router/router_args.json"):
        assert name in manifest["files"], name
    quality = manifest["summary"]["quality"]
    assert set(quality) == set(TASK_NAMES) and all(set(q["tiers"]) >= {"t2", "t3", "t4"} for q in quality.values())


def test_recorded_answers_give_the_manifest_quality(pack, tmp_path):
    """The manifest's dev quality table is what the pack's own answers table scores."""
    manifest = verify_pack(pack)
    reader = _build_over(pack, pack)  # reads answers/ straight from the pack (nothing is written)
    table = quality_table(reader.load_answers("dev"), reader.pools.flat("dev"))
    assert table == {task: q["tiers"] for task, q in manifest["summary"]["quality"].items()}


def test_damaged_or_oversize_pack_is_refused(tiny_pack, tiny_build, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_pack, damaged)
    weights = damaged / "decoders" / "t3" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    (damaged / "stray.bin").write_bytes(b"x")
    with pytest.raises(PackError) as err:
        verify_pack(damaged)
    assert "decoders/t3/model.safetensors: sha256 differs" in str(err.value) and "stray.bin: not in the manifest" in str(err.value)
    with pytest.raises(PackError, match=r"over the 0 MB limit:\n.*decoders/t4 .* MB") as err:
        write_pack(tiny_build, {}, tmp_path / "too-big", max_bytes=1000)
    assert not (tmp_path / "too-big").exists() and not (tmp_path / ".too-big.tmp").exists()


def test_restored_pack_builds_nothing_even_when_code_differs(tiny_pack, tmp_path, monkeypatch):
    """A fresh clone whose export.t1 differs from the pack's still serves the pack (with a note)."""
    import export.pipeline

    real_code, real_modules = export.pipeline._code_fingerprint, export.pipeline._module_hashes
    monkeypatch.setattr(export.pipeline, "_code_fingerprint", lambda *modules: real_code(*modules) + ("-edited" if "export.t1" in modules else ""))
    monkeypatch.setattr(export.pipeline, "_module_hashes", lambda modules: {m: ("edited" if m == "export.t1" else h) for m, h in real_modules(modules).items()})
    logs: list[str] = []
    build = _build_over(tiny_pack, tmp_path / "artifacts", log=logs.append)
    assert sorted(restore_pack(tiny_pack, build)) == sorted(build.stage_names())
    steps = build.run()
    assert not [line for line in logs if "building" in line], logs
    noted = [line for line in logs if "NOTE" in line]
    manifest = verify_pack(tiny_pack)
    runs_t1_code = {stage for stage, recorded in manifest["stages"].items() if "export.t1" in (recorded["inputs"] or {}).get("code_modules", {})}
    assert {"t1", "onnx"} <= runs_t1_code
    assert {line.split("]")[0].strip("[") for line in noted} == runs_t1_code and all("export.t1" in line for line in noted), noted
    assert steps["router"]["dev_quality"] == {task: q["tiers"] for task, q in manifest["summary"]["quality"].items()}
    assert restore_pack(tiny_pack, build) == []  # already there: nothing copied again

    other = replace(build.portfolio, profile=replace(build.profile, router_epochs=build.profile.router_epochs + 1))
    with pytest.raises(PackError, match="portfolio profile differs"):
        restore_pack(tiny_pack, PortfolioBuild(other, root=tmp_path / "other", progress=False))


def _stratified_sample(build: PortfolioBuild) -> list[dict]:
    """SAMPLE_PER_TASK dev records per task, drawn with a fixed seed."""
    return [r for task in TASK_NAMES for r in random.Random(f"pack-sample:{task}").sample(build.pools.dev[task], min(SAMPLE_PER_TASK, len(build.pools.dev[task])))]


def test_served_pack_reproduces_its_recorded_quality(pack, tmp_path):
    from clients.served_eval import route_records, served_prediction
    from export.repository_builder import write_repository
    from routenlp.deployment import Deployment
    from routenlp.metrics import corpus_score
    from routenlp.t4_endpoint import T4Endpoint

    build = _build_over(pack, tmp_path / "artifacts")
    restore_pack(pack, build)
    build.steps = build.run()
    repository = tmp_path / "model_repository"
    write_repository(build, repository, target="cpu")
    sample = _stratified_sample(build)
    recorded = build.load_answers("dev")
    gaps = {}
    # The pack's T4 at normal priority (the deployment's own endpoint is niced, and starves on a
    # shared machine), started beside tritonserver.
    t4 = T4Endpoint(build.decoder_dir("t4"), tmp_path / "t4.log", nice=None)
    deployment = Deployment(repository, state_dir=tmp_path / "state", local_t4=False, t4_url=t4.base_url)
    starting = threading.Thread(target=t4.start, kwargs={"timeout_s": START_TIMEOUT_S})
    try:
        starting.start()
        deployment.start(timeout_s=START_TIMEOUT_S)
        starting.join()
        assert t4.is_ready(), f"T4 endpoint not ready; log {t4.log_path}"
        url = deployment.server.grpc_url
        for tier in ("t1", "t2", "t3", "t4"):
            records = [r for r in sample if tier != "t1" or get_task(r["task"]).structured]
            answers = route_records(url, records, f"always-{tier}", concurrency=4, progress=False)
            assert all(a.error is None and a.metadata["tier"] == tier for a in answers), [a.error or a.metadata for a in answers if a.error or a.metadata["tier"] != tier][:3]
            for task in TASK_NAMES:
                rows = [a for a in answers if a.record["task"] == task]
                if not rows:
                    continue
                targets = [a.record["target"] for a in rows]
                served = corpus_score(task, [served_prediction(a) for a in rows], targets)
                stored = corpus_score(task, [recorded[a.record["id"]][tier]["prediction"] for a in rows], targets)
                gaps[(task, tier)] = (round(served, 4), round(stored, 4))
    finally:
        deployment.stop()
        starting.join()
        t4.stop()
    print("\nserved vs recorded quality on the sample (task, tier): " + ", ".join(f"{t}/{k} {s:.3f} vs {r:.3f}" for (t, k), (s, r) in gaps.items()))
    worst = max(abs(s - r) for s, r in gaps.values())
    mean = sum(abs(s - r) for s, r in gaps.values()) / len(gaps)
    assert worst <= MAX_TASK_TIER_GAP and mean <= MAX_MEAN_GAP, (worst, mean, gaps)
