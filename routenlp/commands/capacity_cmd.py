"""`routenlp capacity`: replicas per tier needed at given loads, from measured per-tier latencies."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from routenlp_core.paths import RESULTS_DIR

DEFAULT_LOADS = "1000,5000,10000,20000"


def register(sub) -> None:
    parser = sub.add_parser("capacity", help="size replicas per tier for given loads (queue simulation)")
    parser.add_argument("--from", dest="source", type=Path, default=RESULTS_DIR / "demo.json",
                        help='JSON with "service_ms" {tier: [ms, ...]} and "mix" {tier: share} (default results/demo.json)')
    parser.add_argument("--loads", default=DEFAULT_LOADS, help=f"queries per minute, comma-separated (default {DEFAULT_LOADS})")
    parser.add_argument("--sla-ms", type=float, default=500.0, help="latency SLA per request in ms (default 500)")
    parser.add_argument("--target", type=float, default=0.99, help="share of requests within the SLA (default 0.99: p99 <= SLA)")
    parser.add_argument("--t4-rate", type=float, default=None, help="T4 API rate limit in requests/s (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the results as JSON here")
    parser.set_defaults(handler=run)


def _loads(text: str) -> list[float]:
    try:
        loads = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--loads must be comma-separated numbers, got {text!r}") from None
    if not loads or any(load <= 0 for load in loads):
        raise ValueError("--loads needs at least one positive load (queries per minute)")
    return loads


def _row(result: dict, sla_ms: float) -> dict[str, str]:
    replicas = result["replicas"]
    t4 = result["tiers"].get("t4")
    return {
        "load_qpm": f"{result['load_qpm']:g}",
        **{tier: str(replicas.get(tier, 0)) for tier in ("t1", "t2", "t3")},
        "t4_util": f"{t4['utilization']:.2f}" if t4 else "-",
        "p50_ms": f"{result['p50_ms']:.1f}",
        "p99_ms": f"{result['p99_ms']:.1f}",
        f">{sla_ms:g}ms": f"{100 * result['sla_violation']:.2f}%",
        "note": "; ".join(result["notes"]) or "ok",
    }


def run(args) -> int:
    from routenlp.capacity import DEFAULT_T4_RATE_PER_S, DEFAULT_WORKERS, CapacityInputError, load_profile, replicas_for
    from routenlp.table import format_table

    t4_rate = args.t4_rate or DEFAULT_T4_RATE_PER_S
    try:
        loads = _loads(args.loads)
        samples, mix = load_profile(args.source)
        results = [replicas_for(load, mix, samples, args.sla_ms, args.target, t4_rate_per_s=t4_rate, seed=args.seed) for load in loads]
    except (CapacityInputError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    workers = ", ".join(f"{tier} {n}" for tier, n in DEFAULT_WORKERS.items())
    print(f"replicas per tier (workers per replica: {workers}; T4 rate limit {t4_rate:g} req/s), "
          f"SLA {args.sla_ms:g} ms for {100 * args.target:g}% of requests, from {args.source}")
    print(format_table([_row(r, args.sla_ms) for r in results]))
    if args.json_out:
        report = {"source": str(args.source), "sla_ms": args.sla_ms, "target": args.target, "seed": args.seed,
                  "workers": DEFAULT_WORKERS, "t4_rate_per_s": t4_rate, "mix": mix, "loads": results}
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0
