"""Build-step caching: each step's output folder holds a stamp with the hash of everything the step
depends on (its config and the stamps of the steps it reads), so a second run with nothing changed
skips every step and an edited setting rebuilds exactly what depends on it.

The stamp also records those inputs, so a stage seeded from a portfolio pack (export/pack.py) can be
trusted when only the step's code differs (`trust_code`): a fresh clone with an edited module then
serves the pack instead of retraining for an hour, and says which code differs."""

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
CODE_INPUT = "code"  # the inputs entry holding the hash of the step's code
# {module: source hash}: recorded in the stamp beside the key but not part of it (the key stays
# what it was before it was recorded), to name the modules whose code differs.
CODE_MODULES = "code_modules"


def fingerprint(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_key(inputs: Mapping[str, Any]) -> str:
    return fingerprint({k: v for k, v in inputs.items() if k != CODE_MODULES})


def as_json(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs as the stamp stores them (tuples -> lists, objects -> str), for comparing."""
    return json.loads(json.dumps(inputs, sort_keys=True, default=str))


def code_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str] | None:
    """The modules whose code differs between two inputs records, or None when anything other
    than code differs (a setting, the data or an upstream stage: the stage must be rebuilt)."""
    recorded, current = as_json(recorded), as_json(current)

    def is_code(key: str) -> bool:  # the step's code, its modules, and helper code hashes (grow_code, ...)
        return key in (CODE_INPUT, CODE_MODULES) or key.endswith("_code")

    if {k: v for k, v in recorded.items() if not is_code(k)} != {k: v for k, v in current.items() if not is_code(k)}:
        return None
    old, new = recorded.get(CODE_MODULES) or {}, current.get(CODE_MODULES) or {}
    helpers = sorted(k for k in set(recorded) | set(current) if k.endswith("_code") and recorded.get(k) != current.get(k))
    return sorted(m for m in set(old) | set(new) if old.get(m) != new.get(m)) + helpers or ["(modules not recorded)"]


@dataclass
class StageCache:
    root: Path
    # Accept a stage whose stamp differs from its inputs only in code (a stage restored from a pack).
    trust_code: bool = False

    def stamp(self, name: str) -> dict[str, Any] | None:
        path = self.root / name / STAMP
        return json.loads(path.read_text()) if path.exists() else None

    def run(self, name: str, inputs: Mapping[str, Any], build: Callable[[Path], Mapping[str, Any]], log: Callable[[str], None] = print) -> dict[str, Any]:
        """Return the stage's summary, building into root/name only when its inputs changed.
        A failed build leaves no stamp, so the next run starts the step again."""
        key = stage_key(inputs)
        stamp = self.stamp(name)
        if stamp and stamp["key"] == key:
            log(f"[{name}] cached ({key})")
            return stamp["summary"]
        trusted = self._trusted_code_change(stamp, inputs)
        if trusted is not None:
            log(f"[{name}] from pack ({stamp['key']}); NOTE: built with other code of {', '.join(trusted)} than this checkout")
            return stamp["summary"]
        out = self.root / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        log(f"[{name}] building ...")
        started = time.perf_counter()
        summary = dict(build(out))
        # the build time travels with the stamp: reports of cached runs still say what a build costs
        record = {"key": key, "summary": summary, "build_seconds": round(time.perf_counter() - started, 1), "inputs": as_json(inputs)}
        (out / STAMP).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        return summary

    def _trusted_code_change(self, stamp: Mapping[str, Any] | None, inputs: Mapping[str, Any]) -> list[str] | None:
        if not self.trust_code or not stamp:
            return None
        if "inputs" not in stamp:
            # a stage of a pack written before stamps recorded their inputs: restore_pack has checked
            # the pack's portfolio and benchmark against this checkout, so only code can differ
            return ["(inputs not recorded by this pack stage)"]
        return code_differences(stamp["inputs"], inputs)

    def build_seconds(self, name: str) -> float | None:
        """How long the step took when it was last built (None: built before this was recorded)."""
        stamp = self.stamp(name)
        return None if stamp is None else stamp.get("build_seconds")

    def key(self, name: str) -> str:
        stamp = self.stamp(name)
        if stamp is None:
            raise RuntimeError(f"stage {name} has not been built")
        return stamp["key"]
