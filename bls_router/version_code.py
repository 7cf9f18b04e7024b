"""The serving code a model version carries: a snapshot of the project's serving modules in the
version folder (`code/`), first on the stub's sys.path, so a version keeps answering with the
code it was written with after the checkout moves on (issue 21: a rollback across a code upgrade).

Standard library only: the stub imports this module from its own snapshot.

SERVING_CODE is the one list of what is snapshotted (folders whole, or single files), relative to
the project root: the python-backend adapters (bls_router/triton_models) and everything they
import from the project. tests/unit/test_version_code.py imports the adapters' imports from a
snapshot alone and fails when this list misses a module; the stub refuses to load when a project
module came from anywhere but its snapshot.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

SERVING_CODE = (
    "bls_router",
    "routenlp_core",  # the pure core: contract, tasks, labels (answers snap to labels), codecs, cascade
)
CODE_DIR = "code"  # in the version folder
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The version's own label sets, where the snapshot's routenlp_core.labels reads them
# (routenlp_core.paths.BENCHMARK_DIR of the snapshot: code/benchmark/manifest.json); labels only, no records.
LABELS_FILE = "benchmark/manifest.json"


def _files_of(root: Path, entry: str) -> list[Path]:
    path = root / entry
    if path.is_dir():
        return sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"serving code {entry} not found under {root} (bls_router/version_code.py SERVING_CODE)")


def snapshot_files(labels: Mapping[str, Iterable[str]], root: Path = PROJECT_ROOT) -> dict[str, Path | str]:
    """Version-folder name -> source file (or content) of the code snapshot and its labels."""
    root = Path(root)
    files: dict[str, Path | str] = {}
    for entry in SERVING_CODE:
        for path in _files_of(root, entry):
            files[f"{CODE_DIR}/{path.relative_to(root).as_posix()}"] = path
    own_labels = {"labels": {task: list(names) for task, names in sorted(labels.items())}}
    files[f"{CODE_DIR}/{LABELS_FILE}"] = json.dumps(own_labels, indent=1)
    return files


def fingerprint(code_dir: Path) -> str:
    """Hash of every file of a snapshot (names and bytes): what the stub reports and the manifest keeps."""
    digest = hashlib.sha256()
    code_dir = Path(code_dir)
    for path in sorted(p for p in code_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(code_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def modules_outside(code_dir: Path, packages: Iterable[str] = ("bls_router", "routenlp_core", "routenlp", "export")) -> list[str]:
    """Project modules this process imported from anywhere but `code_dir` (empty: self-contained)."""
    code_dir = Path(code_dir).resolve()
    found = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.split(".")[0] in packages and path and code_dir not in Path(path).resolve().parents:
            found.append(f"{name} ({path})")
    return sorted(found)


def version_code(model_file: str) -> str | None:
    """For a stub at <version>/model.py: its snapshot's fingerprint (None for a version written
    before snapshots); raises RuntimeError when a project module was imported from elsewhere."""
    code_dir = Path(model_file).resolve().parent / CODE_DIR
    if not code_dir.is_dir():
        return None
    outside = modules_outside(code_dir)
    if outside:
        raise RuntimeError(f"project modules imported from outside the version's code snapshot {code_dir}: {outside}; "
                           "add them to SERVING_CODE (bls_router/version_code.py)")
    return fingerprint(code_dir)
