"""`routenlp doctor`: check the stack and print a table with a fix for anything missing."""

from __future__ import annotations

import sys

from routenlp.doctor import run_checks
from routenlp.table import format_table


def register(sub) -> None:
    parser = sub.add_parser("doctor", help="check tritonserver, perf_analyzer, vLLM, ONNX Runtime and the data")
    parser.set_defaults(handler=run)


def run(args) -> int:
    checks = run_checks(progress=lambda name: print(f"checking {name} ...", file=sys.stderr, flush=True))
    rows = [{"check": c.name, "status": "ok" if c.ok else "FAIL", "detail": c.detail, "fix": c.fix} for c in checks]
    print(format_table(rows))
    failed = [c.name for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)}/{len(checks)} checks passed" + (f"; failing: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
