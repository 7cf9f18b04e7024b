"""The router and T1 ONNX models run inside the routing BLS (ONNX Runtime sessions), not over BLS calls.

A BLS call to a python-backend model costs ~0.6 ms of inter-process round trip on top of the model
(stub -> server -> model stub -> server -> stub) and a stub execution of its own; a session in the
BLS process runs the same model.onnx with neither (README, The routing hot path). The sessions are
loaded from the model versions the serving config's repository_version names (the repository
manifest, written by export/repository_builder.py), so a deploy or rollback that pins router/T1
versions moves the sessions with the BLS version that routes them. Plain Python, no Triton.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

MANIFEST = "routenlp_repository.json"  # at the repository root: the model versions of each repository version
INPROCESS_ONNX_PARAMETER = "inprocess_onnx"  # BLS config parameter: "1" sessions in the BLS, "0" BLS calls
INPROCESS_ONNX_DEFAULT = "1"
ONNX_FILE = "model.onnx"


def manifest_model_versions(repository: Path, repository_version: int) -> dict[str, int]:
    """model -> the version of it repository version N serves; KeyError when N is not in the manifest."""
    path = Path(repository) / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {"versions": []}
    for entry in manifest["versions"]:
        if entry["version"] == repository_version:
            return dict(entry.get("model_versions") or {name: repository_version for name in entry["models"]})
    raise KeyError(repository_version)


def pinned_onnx_files(repository: Path, repository_version: int, models: Iterable[str]) -> dict[str, Path]:
    """model -> the model.onnx of the version repository_version serves, for the models that have one."""
    versions = manifest_model_versions(repository, repository_version)
    files = {}
    for model in models:
        path = Path(repository) / model / str(versions.get(model, "")) / ONNX_FILE
        if model in versions and path.is_file():
            files[model] = path
    return files


class OnnxSessions:
    """One ONNX Runtime session per model, each run on the calling thread. ONNX Runtime releases
    the GIL while it runs, so the T1 call overlapping the router call still overlaps."""

    def __init__(self, files: Mapping[str, Path], intra_op_threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # one thread per run: several routing threads run at once on a 2-core machine
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self.files = dict(files)
        self.sessions = {model: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]) for model, path in files.items()}

    def __contains__(self, model: str) -> bool:
        return model in self.sessions

    def run(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, self.sessions[model].run(list(outputs), dict(inputs))))
