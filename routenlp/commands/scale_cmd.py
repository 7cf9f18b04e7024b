"""`routenlp scale`: RouteNLP vs Always-T4 under 1K-20K queries/min (paper 5, scale).

A discrete-event simulation (routenlp/capacity.py) with fixed capacity, T1 8 workers, T2 and T3 4
each, T4 an API rate-limited to 60 requests/s, fed by the per-tier service times measured in the
BLS during `routenlp demo` (results/demo.json). RouteNLP sends the demo's routing mix; Always-T4
sends everything to T4. Prints p50/p99 and SLA violation per load, writes results/scale.json and
results/plots/scale.png.
"""

from __future__ import annotations

import json
from pathlib import Path

from routenlp_core.paths import RESULTS_DIR

DEFAULT_LOADS = "1000,2000,5000,10000,15000,20000"


def register(sub) -> None:
    parser = sub.add_parser("scale", help="simulated p50/p99 and SLA violation per load: RouteNLP vs Always-T4")
    parser.add_argument("--from", dest="source", type=Path, default=RESULTS_DIR / "demo.json", help="demo results with mix and service_ms")
    parser.add_argument("--loads", default=DEFAULT_LOADS, help="queries per minute, comma-separated")
    parser.add_argument("--sla-ms", type=float, default=500.0)
    parser.add_argument("--t4-rate", type=float, default=60.0, help="T4 API rate limit, requests/s")
    parser.add_argument("--workers", default="t1=8,t2=4,t3=4", help="workers per self-hosted tier")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.set_defaults(handler=run)


def simulate_systems(mix, service_ms, loads, *, sla_ms, t4_rate, workers) -> list[dict]:
    from routenlp.capacity import simulate

    systems = {"routenlp": mix, "always-t4": {"t4": 1.0}}
    rows = []
    for load in loads:
        row = {"load_qpm": load}
        for name, system_mix in systems.items():
            result = simulate(load, system_mix, service_ms, workers=workers, t4_rate_per_s=t4_rate, sla_ms=sla_ms)
            row[name] = {k: round(result[k], 4) for k in ("p50_ms", "p99_ms", "sla_violation")}
            row[name]["t4_utilization"] = round(result["tiers"].get("t4", {}).get("utilization", 0.0), 3)
        rows.append(row)
    return rows


def plot(rows: list[dict], sla_ms: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = [r["load_qpm"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("routenlp", "always-t4"):
        left.plot(loads, [r[name]["p99_ms"] for r in rows], marker="o", label=f"{name} p99")
        left.plot(loads, [r[name]["p50_ms"] for r in rows], marker=".", linestyle="--", label=f"{name} p50")
        right.plot(loads, [r[name]["sla_violation"] for r in rows], marker="o", label=name)
    left.axhline(sla_ms, color="grey", linewidth=0.8, linestyle=":")
    left.set_yscale("log")
    left.set_xlabel("queries per minute")
    left.set_ylabel("latency (ms)")
    left.legend(fontsize=8)
    right.set_xlabel("queries per minute")
    right.set_ylabel(f"share over the {sla_ms:.0f} ms SLA")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args) -> int:
    from routenlp.capacity import load_profile
    from routenlp.table import format_table

    service_ms, mix = load_profile(args.source)
    loads = [float(x) for x in args.loads.split(",") if x.strip()]
    workers = {k: int(v) for k, v in (item.split("=") for item in args.workers.split(","))}
    rows = simulate_systems(mix, service_ms, loads, sla_ms=args.sla_ms, t4_rate=args.t4_rate, workers=workers)
    table = [
        {
            "load/min": f"{r['load_qpm']:.0f}",
            **{f"{name} {k}": f"{r[name][k]:.1f}" if k != "sla_violation" else f"{r[name][k]:.3f}" for name in ("routenlp", "always-t4") for k in ("p50_ms", "p99_ms", "sla_violation")},
            "T4 util (routenlp / always)": f"{r['routenlp']['t4_utilization']:.2f} / {r['always-t4']['t4_utilization']:.2f}",
        }
        for r in rows
    ]
    print(f"simulated with the routing mix and service times of {args.source}; workers {workers}, T4 limit {args.t4_rate:g} req/s, SLA {args.sla_ms:g} ms")
    print(format_table(table))
    out = {"source": str(args.source), "mix": mix, "workers": workers, "t4_rate_per_s": args.t4_rate, "sla_ms": args.sla_ms, "loads": rows}
    (args.results / "scale.json").write_text(json.dumps(out, indent=2) + "\n")
    path = plot(rows, args.sla_ms, args.results / "plots" / "scale.png")
    print(f"wrote {args.results / 'scale.json'}, {path}")
    return 0
