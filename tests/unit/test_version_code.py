"""bls_router/version_code.py: a version's serving-code snapshot holds everything the adapters
import from the project, and a version answers with its own labels and code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bls_router.version_code import CODE_DIR, fingerprint, snapshot_files

# What the python-backend adapters import from the project at load (bls_router/triton_models),
# and what the routing service imports lazily on its first requests.
ADAPTER_IMPORTS = (
    "bls_router.deferred", "bls_router.escalation_log", "bls_router.escalation_monitor", "bls_router.service",
    "bls_router.vllm_requests", "bls_router.t4_client", "bls_router.circuit_breaker", "bls_router.version_code",
    "bls_router.onnx_batch", "routenlp_core.cascade", "routenlp_core.serving_config", "routenlp_core.t1_codec",
    "routenlp_core.uncertainty", "routenlp_core.answers", "routenlp_core.encoder_inputs",
    "routenlp_core.vllm_engine_args", "routenlp_core.contract", "routenlp_core.stage_times",
)  # fmt: skip


def _write_snapshot(folder: Path, labels: dict) -> Path:
    for name, source in snapshot_files(labels).items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes() if isinstance(source, Path) else source.encode())
    return folder / CODE_DIR


def _in_snapshot(code: Path, script: str) -> str:
    """Runs `script` in a fresh interpreter with the snapshot first on sys.path, as the stub does
    (the project is still installed in the venv: a module missing from the snapshot would come
    from the checkout silently, which modules_outside reports)."""
    prelude = f"import sys; sys.path.insert(0, {str(code)!r})\n"
    command = [sys.executable, "-c", prelude + script]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=code)
    return done.stdout


def test_the_snapshot_holds_every_project_module_the_adapters_import(tmp_path):
    code = _write_snapshot(tmp_path / "1", {"cs_intent": ["card_arrival"]})
    script = (
        "import importlib, json\n"
        f"for name in {ADAPTER_IMPORTS!r}: importlib.import_module(name)\n"
        "from bls_router.version_code import modules_outside\n"
        f"print(json.dumps(modules_outside({str(code)!r})))\n"
    )
    assert json.loads(_in_snapshot(code, script)) == []


def test_a_version_reads_its_own_labels_and_its_fingerprint_covers_every_file(tmp_path):
    code = _write_snapshot(tmp_path / "1", {"cs_intent": ["card_arrival", "lost_card"]})
    script = "from routenlp_core.labels import task_labels; print(list(task_labels('cs_intent')))"
    assert _in_snapshot(code, script).strip() == "['card_arrival', 'lost_card']"
    before = fingerprint(code)
    (code / "bls_router" / "service.py").write_text((code / "bls_router" / "service.py").read_text() + "\n# marker\n")
    assert fingerprint(code) != before
