"""Write a built portfolio into a Triton model repository as one new version of every model.

Models: router (and its loss-term ablations router_no_cost / router_no_quality), t1_<task>, t2, t3
and the routing BLS `routenlp` (model.py + serving_config.json
generated from the portfolio and build + the shared tokenizer), all with the same version number.

Two targets from the same artefacts: `cpu` (this Triton build: ONNX models run by the
onnxruntime python-backend runner, vLLM tiers by our python-backend engine) and `ngc` (stock NGC
tritonserver + vLLM images: platform onnxruntime_onnx and the vllm backend). Every config is
generated; a version folder is assembled beside its final place and renamed in (atomic).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from bls_router.inprocess_onnx import (
    INPROCESS_ONNX_DEFAULT,
    INPROCESS_ONNX_PARAMETER,
    MANIFEST,
    manifest_model_versions,
)
from bls_router.version_code import PROJECT_ROOT, snapshot_files
from export.onnx_export import router_spec, spec_for_model
from export.repository import latest_version, write_model_version
from export.triton_config import ModelSpec, TensorSpec
from routenlp_core import contract
from routenlp_core.atomic import atomic_write_text
from routenlp_core.contract import BLS_MODEL, ROUTER_ABLATION_MODELS, TARGETS
from routenlp_core.serving_config import (
    BLS_MAX_PENDING_DEFAULT,
    BLS_MAX_PENDING_PARAMETER,
    BLS_WORKERS_DEFAULT,
    BLS_WORKERS_PARAMETER,
)

MODELS_DIR = Path(__file__).resolve().parent.parent / "bls_router" / "triton_models"
ONNX_RUNNER = MODELS_DIR / "onnx_runner.py"
VLLM_TIER = MODELS_DIR / "vllm_tier.py"
ROUTENLP_BLS = MODELS_DIR / "routenlp_bls.py"
# Imported by the adapters from the installed package; part of what a new adapter version is.
ADAPTER_HELPERS = (MODELS_DIR.parent / "deferred.py", MODELS_DIR.parent / "onnx_batch.py")
# Where NGC deployments mount the repository (docker -v ...:/models); vLLM needs absolute paths.
NGC_MOUNT = "/models"


# Router and T1: Triton's dynamic batcher hands a model instance every request queued while it was
# busy (no added delay: an idle model runs a lone request at once), one ONNX Runtime run for all.
ONNX_MAX_BATCH = 16


def onnx_model_spec(io_spec, target: str, name: str | None = None) -> ModelSpec:
    import dataclasses

    spec = io_spec.model_spec(name=name, max_batch_size=ONNX_MAX_BATCH, dynamic_batching_delay_us=0)
    if target == "cpu":
        # The python-backend runner pads requests of different lengths into one batch itself
        # (onnx_runner.py); the onnxruntime backend (ngc) batches only equal shapes.
        inputs = [dataclasses.replace(t, ragged=True) for t in spec.inputs]
        # One intra-op thread per model: many small models share 2 cores, and the BLS calls them
        # concurrently.
        return dataclasses.replace(spec, inputs=inputs, backend="python", parameters={"intra_op_threads": "1"})
    return dataclasses.replace(spec, backend=None, platform="onnxruntime_onnx")


def _onnx_files(onnx_path: Path, target: str) -> dict[str, Path]:
    files = {"model.onnx": onnx_path}
    if target == "cpu":
        files["model.py"] = ONNX_RUNNER
    return files


def routenlp_model_spec(target: str = "cpu") -> ModelSpec:
    """The routing BLS: python backend on both targets (it needs the bls_router package).

    One text per request ([1, 1] with the batch dimension); dynamic batching hands an instance
    whatever is queued and its routing threads answer each request on their own (the `workers`
    and `max_pending` parameters); two instances, so one stub lost still leaves one serving."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    return ModelSpec(
        name=BLS_MODEL,
        inputs=tuple(TensorSpec(name, "BYTES", (1,), optional=name in contract.OPTIONAL_INPUTS) for name in contract.INPUTS),
        outputs=tuple(TensorSpec(name, "BYTES", (1,)) for name in contract.OUTPUTS),
        backend="python",
        max_batch_size=8,
        instance_count=2,
        dynamic_batching_delay_us=0,
        parameters={
            BLS_WORKERS_PARAMETER: str(BLS_WORKERS_DEFAULT), BLS_MAX_PENDING_PARAMETER: str(BLS_MAX_PENDING_DEFAULT),
            # router/T1 sessions in the BLS (bls_router/inprocess_onnx.py) on this CPU build, where the
            # Triton models are python-backend stubs; NGC serves them with the native onnxruntime
            # backend and its BLS image need not have onnxruntime: BLS calls there
            INPROCESS_ONNX_PARAMETER: INPROCESS_ONNX_DEFAULT if target == "cpu" else "0",
        },
    )


def ablation_routers(build) -> list[str]:
    """The router ablation models the build has (a build from before they existed has none)."""
    return list(ROUTER_ABLATION_MODELS) if build.cache.stamp("router_ablations") is not None else []


def _read_manifest(repository: Path) -> dict[str, Any]:
    path = repository / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {"versions": []}


def write_repository(
    build, repository: Path, target: str = "cpu", force: bool | Collection[str] = False, code_root: Path | None = None
) -> dict[str, Any]:
    """Write version N+1 of router, t1_<task>, t2, t3 and routenlp from `build` (export.pipeline.PortfolioBuild).
    Returns {version, models, fresh}; when the newest version already holds these exact artefacts
    (same build fingerprints and target) nothing is written. `force`: write a new version even
    so, of every model (True) or of the models named (the others keep their newest version).
    `code_root`: where the serving code is snapshotted from (default: this checkout)."""
    from export.serving_config_builder import build_serving_config
    from export.stage_cache import fingerprint as content_fingerprint
    from export.t1 import T1_TASKS, load_t1
    from export.vllm_tier_config import vllm_model_json, vllm_tier_spec
    from routenlp_core.serving_config import SERVING_CONFIG_FILE, TOKENIZER_DIR

    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    code = serving_code_files(code_root)
    # The serving config without its version number: new thresholds, prices or bars -> new version.
    serving = build_serving_config(build, 0, target=target)
    fingerprint = {
        "target": target,
        "onnx": build.cache.key("onnx"),
        "router_ablations": build.cache.stamp("router_ablations") and build.cache.key("router_ablations"),
        "decoders": {t: build.decoder_dir(t).name + ":" + _stage_key(build, t) for t in ("t2", "t3")},
        BLS_MODEL: content_fingerprint({"serving_config": serving.dumps(), "tokenizer": build.cache.key("tokenizer")}),
        # the python-backend adapters and the serving code snapshot copied into the versions: a fix
        # to any of it must reach the repository
        "adapters": content_fingerprint({name: _text(source) for name, source in {**adapter_files(), **code}.items()}),
    }
    manifest = _read_manifest(repository)
    if manifest["versions"] and manifest["versions"][-1]["fingerprint"] == fingerprint and not force:
        last = manifest["versions"][-1]
        return {"version": last["version"], "models": last["models"], "fresh": False}

    names = ["router", *ablation_routers(build), *(f"t1_{task}" for task in T1_TASKS), "t2", "t3", BLS_MODEL]
    version = 1 + max(latest_version(repository / name) for name in names)
    models: dict[str, tuple[ModelSpec, dict]] = {}
    onnx_dir = build.root / "onnx"
    models["router"] = (onnx_model_spec(router_spec(), target), _onnx_files(onnx_dir / "router.onnx", target))
    for name in ablation_routers(build):
        models[name] = (onnx_model_spec(router_spec(), target, name=name), _onnx_files(build.root / "router_ablations" / f"{name}.onnx", target))
    for task in T1_TASKS:
        model, _ = load_t1(build.root / "t1" / task)
        io_spec = spec_for_model(model, task)
        models[io_spec.model] = (onnx_model_spec(io_spec, target), _onnx_files(onnx_dir / f"{io_spec.model}.onnx", target))
    max_model_len = build.profile.max_input_tokens + build.profile.max_answer_tokens
    for tier in ("t2", "t3"):
        checkpoint = build.portfolio.tiers[tier].checkpoint
        files: dict[str, Any] = {}
        if checkpoint:  # a real checkpoint stays where it is; the version points at it
            model_path = str(Path(checkpoint).resolve())
        else:
            files["hf"] = build.decoder_dir(tier)
            # vLLM resolves relative paths from its working directory, so NGC gets the absolute
            # path inside the container's mounted repository.
            model_path = "hf" if target == "cpu" else f"{NGC_MOUNT}/{tier}/{version}/hf"
        files["model.json"] = vllm_model_json(model_path, max_model_len=max_model_len, target=target)
        if target == "cpu":
            files.update({"model.py": VLLM_TIER, **code})
        models[tier] = (vllm_tier_spec(tier, target=target), files)
    serving = build_serving_config(build, version, target=target, thresholds=serving.thresholds, calibration=serving.calibration)
    models[BLS_MODEL] = (
        routenlp_model_spec(target),
        {
            "model.py": ROUTENLP_BLS, SERVING_CONFIG_FILE: serving.dumps(), TOKENIZER_DIR: build.root / "tokenizer",
            **code,
        },
    )
    # A model whose newest version already holds exactly these files keeps it (not force): a swap
    # then reloads only what changed (coopt leaves T3 alone), and the newest folder of every model
    # is still this repository version's, so a restarted server loads the same models.
    previous = newest_model_fingerprints(repository, manifest)
    model_versions, contents = {}, {}
    for name, (spec, files) in models.items():
        contents[name] = model_content_fingerprint(spec, files)
        forced = force is True or (not isinstance(force, bool) and name in force)
        if not forced and previous.get(name, (None, None))[1] == contents[name]:
            model_versions[name] = previous[name][0]
            continue
        write_model_version(repository, spec, files, version=version)
        model_versions[name] = version
    manifest["versions"].append({
        "version": version, "fingerprint": fingerprint, "models": sorted(models), "model_versions": model_versions,
        "model_fingerprints": contents, "portfolio": build.portfolio.name, "profile": build.profile.name,
    })  # fmt: skip
    atomic_write_text(repository / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return {"version": version, "models": sorted(models), "model_versions": model_versions, "fresh": True}


def adapter_files() -> dict[str, Path]:
    return {path.name: path for path in (ONNX_RUNNER, VLLM_TIER, ROUTENLP_BLS)}


def serving_code_files(code_root: Path | None = None) -> dict[str, Path | str]:
    """The serving-code snapshot and label sets a python-backend version carries (bls_router/version_code.py)."""
    from routenlp_core.labels import task_labels
    from routenlp_core.tasks import TASK_NAMES

    labels = {task: task_labels(task) for task in TASK_NAMES if task_labels(task)}
    return snapshot_files(labels, code_root or PROJECT_ROOT)


def _text(source: Path | str) -> str:
    return source.read_text() if isinstance(source, Path) else source


def model_content_fingerprint(spec: ModelSpec, files: dict[str, Any]) -> str:
    """Hash of a model version's generated config and every file it would hold."""
    import hashlib

    from export.triton_config import render_config

    digest = hashlib.sha256(render_config(spec).encode())
    for name in sorted(files):
        source = files[name]
        digest.update(f"\0{name}\0".encode())
        if isinstance(source, Path):
            paths = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
            for path in paths:
                digest.update(str(path.relative_to(source) if source.is_dir() else "").encode())
                digest.update(path.read_bytes())
        else:
            digest.update(source.encode() if isinstance(source, str) else source)
    return digest.hexdigest()[:16]


def newest_model_fingerprints(repository: Path, manifest: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """model -> (its newest version on disk, that version's content fingerprint), where the
    manifest recorded one (repositories written before fingerprints were kept have none)."""
    newest: dict[str, tuple[int, str]] = {}
    for entry in manifest["versions"]:
        for name, version in (entry.get("model_versions") or {}).items():
            if version == latest_version(repository / name) and name in (entry.get("model_fingerprints") or {}):
                newest[name] = (version, entry["model_fingerprints"][name])
    return newest


def model_versions(repository: Path, repository_version: int) -> dict[str, int]:
    """model -> the version of it that repository version N serves (all N before sparse writes)."""
    return manifest_model_versions(repository, repository_version)


def _stage_key(build, tier: str) -> str:
    return "external" if build.portfolio.tiers[tier].checkpoint else build.cache.key(f"decoders/{tier}")
