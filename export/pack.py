"""Portfolio packs: a built portfolio's stage folders plus a manifest, committed under packs/ so a
fresh clone serves the default portfolio in minutes instead of training it for most of an hour.

A pack holds every stage of export/pipeline.py exactly as the build left it (stamps included):
tokenizer, T1 heads (safetensors) and their ONNX exports, the decoder tiers as HF folders
(safetensors), the all-pairs answers tables, the router and its ablations. `manifest.json` records
the resolved portfolio (profile, tiers, router, tasks), the benchmark's hashes, the git commit,
build time, the export summary (its dev quality table is what the stored weights gave) and the
sha256 of every file in the pack.

`restore_pack` copies the stages into a build's artifact folder and lets its stage cache trust them
when only code differs (export/stage_cache.py), so an edited module does not send a fresh clone
into a rebuild; the log names the modules whose code differs from the pack's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from export.stage_cache import as_json
from routenlp_core.paths import BENCHMARK_DIR, REPO_ROOT

PACKS_DIR = REPO_ROOT / "packs"
MANIFEST = "manifest.json"
FORMAT = 1
MAX_PACK_BYTES = 100 * 1000 * 1000  # 100 MB: what a git repository carries without LFS


class PackError(RuntimeError):
    """A pack that cannot be written or used; the message says which file or setting."""


def pack_dir(portfolio) -> Path:
    """packs/<portfolio>-<profile>/, named like the build's artifact folder."""
    return PACKS_DIR / f"{portfolio.name}-{portfolio.profile.name}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def portfolio_config(portfolio) -> dict[str, Any]:
    """The resolved portfolio description (profile overrides merged in) a pack was built from."""
    return as_json({
        "name": portfolio.name,
        "profile": asdict(portfolio.profile),
        "tiers": {name: asdict(tier) for name, tier in portfolio.tiers.items()},
        "router": asdict(portfolio.router),
        "tasks": {name: asdict(task) for name, task in portfolio.tasks.items()},
    })  # fmt: skip


def data_hashes(benchmark: Path = BENCHMARK_DIR) -> dict[str, Any]:
    files = sorted(p for p in benchmark.rglob("*.jsonl") if p.is_file())
    return {
        "manifest_sha256": sha256_file(benchmark / "manifest.json"),
        "files": {str(p.relative_to(benchmark)): sha256_file(p) for p in files},
    }


def git_state() -> dict[str, Any]:
    """The commit the pack was built at, and whether the working tree had uncommitted changes."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def platform_state() -> dict[str, Any]:
    """What the trained weights depend on beyond the seed: the same build on another CPU
    instruction set (AVX-512 vs AVX2 kernels) or torch version trains different weights."""
    import platform

    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(), "processor": platform.processor()}


def _file_table(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        str(p.relative_to(folder)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
    }  # fmt: skip


def size_report(files: Mapping[str, Mapping[str, Any]], stages: list[str]) -> str:
    """Megabytes per stage and the largest files: what to cut when a pack is too big."""
    per_stage = {s: sum(f["bytes"] for rel, f in files.items() if rel.startswith(s + "/")) for s in stages}
    largest = sorted(files.items(), key=lambda item: -item[1]["bytes"])[:8]
    return "; ".join(f"{s} {b / 1e6:.1f} MB" for s, b in per_stage.items()) + "\nlargest files: " + ", ".join(f"{rel} {f['bytes'] / 1e6:.1f} MB" for rel, f in largest)


def write_pack(build, summary: Mapping[str, Any], out: Path | None = None, max_bytes: int = MAX_PACK_BYTES) -> dict[str, Any]:
    """Write `build` (export.pipeline.PortfolioBuild, every stage built) as a pack at `out`
    (default packs/<portfolio>-<profile>/) with `summary` (the export report) in its manifest.
    Raises PackError, naming the sizes, when the pack would exceed `max_bytes`."""
    out = Path(out or pack_dir(build.portfolio))
    stages = build.stage_names()
    missing = [s for s in stages if build.cache.stamp(s) is None]
    if missing:
        raise PackError(f"stages {', '.join(missing)} of {build.root} are not built: run `routenlp export` first")
    previous = read_manifest(out) if (out / MANIFEST).exists() else None
    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for stage in stages:
        shutil.copytree(build.root / stage, staging / stage)
    files = _file_table(staging)
    total = sum(f["bytes"] for f in files.values())
    if total > max_bytes:
        shutil.rmtree(staging)
        raise PackError(f"the pack would hold {total / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit:\n{size_report(files, stages)}")
    manifest = {
        "format": FORMAT,
        "pack_version": (previous["pack_version"] + 1) if previous else 1,
        "portfolio": portfolio_config(build.portfolio),
        "data": data_hashes(),
        "git": git_state(),
        "platform": platform_state(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "full_build_seconds": summary.get("full_build_seconds"),
        "stages": {s: {k: build.cache.stamp(s).get(k) for k in ("key", "inputs", "build_seconds")} for s in stages},
        "summary": as_json(summary),  # the export report: dev quality per task and tier, costs, router
        "files": files,
        "total_bytes": total,
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return manifest


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise PackError(f"{path}: no readable {MANIFEST}: {err}") from None
    if manifest.get("format") != FORMAT:
        raise PackError(f"{path}: pack format {manifest.get('format')!r}, this checkout reads format {FORMAT}")
    return manifest


def verify_pack(path: Path, max_bytes: int = MAX_PACK_BYTES) -> dict[str, Any]:
    """The manifest, once every file the manifest lists is present with its size and sha256 (and
    nothing else is in the pack); PackError naming each bad file otherwise."""
    path = Path(path)
    manifest = read_manifest(path)
    listed = manifest["files"]
    found = _file_table(path)
    problems = [f"{rel}: missing" for rel in sorted(set(listed) - set(found))]
    problems += [f"{rel}: not in the manifest" for rel in sorted(set(found) - set(listed))]
    problems += [f"{rel}: sha256 differs from the manifest's" for rel in sorted(set(listed) & set(found)) if listed[rel] != found[rel]]
    total = sum(f["bytes"] for f in found.values())
    if total > max_bytes:
        problems.append(f"{total / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit")
    if problems:
        raise PackError(f"pack {path} is damaged:\n  " + "\n  ".join(problems))
    return manifest


def mismatches(manifest: Mapping[str, Any], portfolio) -> list[str]:
    """Why the pack was not built from this portfolio/profile and benchmark ([] when it was)."""
    reasons = []
    recorded, current = manifest["portfolio"], portfolio_config(portfolio)
    for section in sorted(set(recorded) | set(current)):
        if recorded.get(section) != current.get(section):
            reasons.append(f"portfolio {section} differs")
    if manifest["data"]["manifest_sha256"] != sha256_file(BENCHMARK_DIR / "manifest.json"):
        reasons.append("benchmark/manifest.json differs (the benchmark was rebuilt)")
    return reasons


def restore_pack(path: Path, build) -> list[str]:
    """Copy the pack's stages into `build.root` (those whose stamp differs) and let the build's
    stage cache trust them where only code differs. Returns the stages copied."""
    path = Path(path)
    manifest = verify_pack(path)
    reasons = mismatches(manifest, build.portfolio)
    if reasons:
        raise PackError(f"pack {path} does not match portfolio {build.portfolio.name} / profile {build.profile.name}: {'; '.join(reasons)}")
    copied = []
    for stage, recorded in manifest["stages"].items():
        stamp = build.cache.stamp(stage)
        if stamp is not None and stamp["key"] == recorded["key"]:
            continue
        shutil.rmtree(build.root / stage, ignore_errors=True)
        shutil.copytree(path / stage, build.root / stage)
        copied.append(stage)
    build.cache.trust_code = True
    return copied


def describe(manifest: Mapping[str, Any]) -> str:
    git = manifest.get("git") or {}
    commit = (git.get("commit") or "unknown")[:10] + (" (uncommitted changes)" if git.get("dirty") else "")
    return f"pack v{manifest['pack_version']}, built {manifest['built_at']} at commit {commit}, {manifest['total_bytes'] / 1e6:.1f} MB"

