"""`routenlp log tail`: the latest records of the durable escalation log (readable while serving)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    parser = sub.add_parser("log", help="the escalation log (one record per routed request)")
    verbs = parser.add_subparsers(dest="log_command", required=True, metavar="VERB")
    tail = verbs.add_parser("tail", help="show the latest records")
    tail.add_argument("-n", type=int, default=20, help="how many records (default 20)")
    tail.add_argument("--task", default=None, help="only this task")
    tail.add_argument("--db", type=Path, default=None, help="log file (default: ROUTENLP_ESCALATION_LOG, else var/escalation_log.sqlite)")
    tail.add_argument("--json", action="store_true", help="one JSON record per line instead of a table")
    tail.set_defaults(handler=run_tail)


def default_db() -> Path:
    from bls_router.escalation_log import log_path

    return log_path()


def _row(record: dict) -> dict[str, str]:
    return {
        "seq": str(record["seq"]),
        "request_id": str(record["request_id"])[:24],
        "task": record["task"],
        "policy": record.get("policy", "routenlp"),
        "path": ">".join(record["path"]),
        "u": " ".join(f"{t}={u:.3f}" for t, u in record.get("u", {}).items()),
        "cost_usd": f"{record['cost_usd']:.6f}",
        "total_ms": f"{record['total_ms']:.1f}",
        "fallback": (record.get("fallback") or "")[:40],
        "version": f"{record.get('repository_version')}/{record.get('bls_version')}",
    }


def run_tail(args) -> int:
    from bls_router.escalation_log import EscalationLogReader
    from routenlp.table import format_table

    path = args.db or default_db()
    try:
        with EscalationLogReader(path) as reader:
            records = reader.tail(args.n, task=args.task)
            total = reader.count()
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        for record in records:
            print(json.dumps(record, sort_keys=True))
        return 0
    print(format_table([_row(r) for r in records]) if records else "(no records)")
    print(f"\n{len(records)} of {total} records in {path}")
    return 0
