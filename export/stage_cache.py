"""Build-step caching: each step's output folder holds a stamp with the hash of everything the step
depends on (its config and the stamps of the steps it reads), so a second run with nothing changed
skips every step and an edited setting rebuilds exactly what depends on it."""

from __future__ import annotations

import hashlib
import json
import time
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAMP = ".stage.json"


def fingerprint(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StageCache:
    root: Path

    def stamp(self, name: str) -> dict[str, Any] | None:
        path = self.root / name / STAMP
        return json.loads(path.read_text()) if path.exists() else None

    def run(self, name: str, inputs: Mapping[str, Any], build: Callable[[Path], Mapping[str, Any]], log: Callable[[str], None] = print) -> dict[str, Any]:
        """Return the stage's summary, building into root/name only when its inputs changed.
        A failed build leaves no stamp, so the next run starts the step again."""
        key = fingerprint(inputs)
        stamp = self.stamp(name)
        if stamp and stamp["key"] == key:
            log(f"[{name}] cached ({key})")
            return stamp["summary"]
        out = self.root / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        log(f"[{name}] building ...")
        started = time.perf_counter()
        summary = dict(build(out))
        # the build time travels with the stamp: reports of cached runs still say what a build costs
        record = {"key": key, "summary": summary, "build_seconds": round(time.perf_counter() - started, 1)}
        (out / STAMP).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        return summary

    def build_seconds(self, name: str) -> float | None:
        """How long the step took when it was last built (None: built before this was recorded)."""
        stamp = self.stamp(name)
        return None if stamp is None else stamp.get("build_seconds")

    def key(self, name: str) -> str:
        stamp = self.stamp(name)
        if stamp is None:
            raise RuntimeError(f"stage {name} has not been built")
        return stamp["key"]
