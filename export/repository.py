"""Write model-repository versions atomically: a version is assembled beside its final place and
renamed in, so a running tritonserver never sees a half-written version.

Each version folder also keeps its own rendered config (VERSION_CONFIG): Triton reads only the
model's config.pbtxt (the newest version's), so pinning or rolling back to an older version sends
that version's config with the load (routenlp/repository_api.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from export.triton_config import ModelSpec, render_config
from routenlp_core.atomic import atomic_write_text

VERSION_CONFIG = "config.pbtxt"  # in the version folder: the config that version was written with


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
    config = render_config(spec)
    try:
        for name, source in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, Path):
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
            else:
                target.write_bytes(source.encode() if isinstance(source, str) else source)
        (staging / VERSION_CONFIG).write_text(config)  # last: a copied older version's config never wins
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write_text(model_dir / "config.pbtxt", config)
    return final
