"""Write model-repository versions atomically: a version is assembled beside its final place and
renamed in, so a running tritonserver never sees a half-written version."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from export.triton_config import ModelSpec, render_config
from routenlp_core.atomic import atomic_write_text


def latest_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0)


def write_model_version(
    repository: Path,
    spec: ModelSpec,
    files: Mapping[str, Path | bytes | str],
    version: int | None = None,
) -> Path:
    """Write `repository/<model>/<version>/` with `files` (name -> source path or content) and the
    model's generated config.pbtxt. Returns the version folder. version=None means latest + 1."""
    model_dir = Path(repository) / spec.name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = latest_version(model_dir) + 1 if version is None else version
    final = model_dir / str(version)
    if final.exists():
        raise FileExistsError(f"{final} exists; versions are immutable once written")
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".staging-{version}-"))
    try:
        for name, source in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, Path):
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
            else:
                target.write_bytes(source.encode() if isinstance(source, str) else source)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write_text(model_dir / "config.pbtxt", render_config(spec))
    return final
