"""perf_analyzer side by side in one run (paper 5): the routed entry model vs the Always-T4 policy
over concurrency levels, and the routing overhead (routed requests kept on T1 vs direct t1 calls).

Both sides of each comparison run back to back on the same server with --input-data built from
the benchmark, so their ratio holds on a shared, noisy machine where absolute numbers do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clients.perf import PerfPoint, run_perf_analyzer, write_input_data
from clients.route_client import ENTRY_MODEL
from routenlp_core.contract import TASK, TEXT

OVERHEAD_TASK = "legal_risk"  # a structured task with a T1 head


def entry_rows(records: Sequence[Mapping[str, Any]], **extra: str) -> list[dict[str, list[str]]]:
    """perf_analyzer rows for the entry model: TEXT, TASK (+ POLICY / MAX_TIER), shape [1] each."""
    return [{TEXT: [r["text"]], TASK: [r["task"]], **{name: [value] for name, value in extra.items()}} for r in records]


def t1_rows(records: Sequence[Mapping[str, Any]], tokenizer, max_len: int, batched: bool = True) -> list[dict]:
    """Direct t1_<task> rows: input_ids / attention_mask, encoded as the BLS encodes them; shape [T]
    for a model with Triton batching (perf_analyzer adds the batch axis), else [1, T]."""
    from routenlp_core.encoder_inputs import encode_texts

    rows = []
    for ids in encode_texts(tokenizer, [r["text"] for r in records], max_len):
        shape = [len(ids)] if batched else [1, len(ids)]
        mask = [1] * len(ids)
        rows.append({
            "input_ids": {"content": ids, "shape": shape},
            "attention_mask": {"content": mask, "shape": shape},
        })
    return rows


# A routed mix spans 2 ms (T1) to seconds (escalated to T4): window averages swing, so a wide
# stability band; the ratio of the two sides is the number to read, not either alone.
STABILITY_PERCENT = 100


def _point(model: str, url: str, data: Path, concurrency: int, measurement_ms: int) -> PerfPoint:
    (point,) = run_perf_analyzer(
        model, url, input_data=data, concurrency=(concurrency, concurrency), measurement_ms=measurement_ms, stability_percent=STABILITY_PERCENT
    )
    return point


def compare_policies(url: str, records, work_dir: Path, concurrencies: Sequence[int], measurement_ms: int = 3000, log=print) -> list[dict[str, Any]]:
    routed = write_input_data(work_dir / "routed.json", entry_rows(records))
    always_t4 = write_input_data(work_dir / "always_t4.json", entry_rows(records, POLICY="always-t4"))
    rows = []
    for c in concurrencies:
        ours = _point(ENTRY_MODEL, url, routed, c, measurement_ms)
        t4 = _point(ENTRY_MODEL, url, always_t4, c, measurement_ms)
        rows.append(_pair_row(c, ours, t4, "routenlp", "always_t4"))
        log(f"  concurrency {c}: routenlp {ours.throughput:.1f}/s p99 {ours.p99_ms:.0f} ms; always-t4 {t4.throughput:.1f}/s p99 {t4.p99_ms:.0f} ms")
    return rows


def routing_overhead(
    url: str, records, tokenizer, max_len: int, work_dir: Path, concurrencies: Sequence[int],
    measurement_ms: int = 3000, rounds: int = 3, probe=None, cpu=None, log=print,
) -> list[dict[str, Any]]:
    """Routed-on-T1 (the entry model, MAX_TIER t1) against direct t1_<task> calls at each
    concurrency: `rounds` interleaved pairs (routed, direct, routed, direct, ...) so both sides
    see the same load on a shared machine; the row holds the medians over rounds and their
    difference / ratio. `probe` (clients.perf_breakdown.BreakdownProbe): read around every routed
    run, so each row also says where the routed requests' time went; `cpu`
    (clients.perf_cpu.CpuProbe): around every run, the CPU per request of each process, both sides."""
    import contextlib
    import statistics

    task_records = [r for r in records if r["task"] == OVERHEAD_TASK]
    routed = write_input_data(work_dir / "routed_t1.json", entry_rows(task_records, MAX_TIER="t1"))
    direct = write_input_data(work_dir / "direct_t1.json", t1_rows(task_records, tokenizer, max_len))
    rows = []
    for c in concurrencies:
        ours, plain, breakdowns, cpu_us = [], [], [], {"routed_t1": [], "direct_t1": []}
        for _ in range(rounds):
            with probe if probe is not None else contextlib.nullcontext():
                with cpu.on(ENTRY_MODEL) if cpu is not None else contextlib.nullcontext():
                    ours.append(_point(ENTRY_MODEL, url, routed, c, measurement_ms))
                if cpu is not None:
                    cpu_us["routed_t1"].append(cpu.result())
            if probe is not None:
                breakdowns.append(probe.result())
            with cpu.on(f"t1_{OVERHEAD_TASK}") if cpu is not None else contextlib.nullcontext():
                plain.append(_point(f"t1_{OVERHEAD_TASK}", url, direct, c, measurement_ms))
            if cpu is not None:
                cpu_us["direct_t1"].append(cpu.result())
        row = _pair_row(c, _median_point(ours), _median_point(plain), "routed_t1", "direct_t1")
        for q in ("p50", "p95", "p99"):
            added = [getattr(a, f"{q}_ms") - getattr(b, f"{q}_ms") for a, b in zip(ours, plain)]
            row[f"added_{q}_ms"] = round(statistics.median(added), 2)
        row["throughput_ratio_per_round"] = [round(a.throughput / b.throughput, 3) for a, b in zip(ours, plain)]
        if breakdowns:
            row["breakdown"] = _merge_breakdowns(breakdowns)
        if cpu is not None:
            row["cpu_us_per_request"] = {side: _median_cpu(runs) for side, runs in cpu_us.items() if runs and runs[0]}
        rows.append(row)
        log(
            f"  concurrency {c}: routed-on-T1 p50 {row['routed_t1_p50_ms']:.2f} ms vs direct t1 "
            f"{row['direct_t1_p50_ms']:.2f} ms (+{row['added_p50_ms']:.2f} p50, +{row['added_p95_ms']:.2f} p95), "
            f"throughput x{row['throughput_ratio']:.3f}"
        )
    return rows


def _median_cpu(runs: Sequence[Mapping[str, float | None]]) -> dict[str, float]:
    """Per process, the median over rounds of its CPU microseconds per request."""
    import statistics

    return {name: round(statistics.median(r[name] for r in runs if r.get(name) is not None), 1) for name in runs[0]}


def _median_point(points: Sequence[PerfPoint]) -> PerfPoint:
    import statistics

    def median(name: str) -> float | None:
        values = [getattr(p, name) for p in points if getattr(p, name) is not None]
        return statistics.median(values) if values else None

    names = ("throughput", "p50_ms", "p99_ms", "avg_ms", "p95_ms")
    return PerfPoint(points[0].concurrency, *(median(name) for name in names))


def _merge_breakdowns(breakdowns: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-request means over all rounds (weighted by each round's requests)."""
    stages: dict[str, float] = {}
    requests = 0
    models: dict[str, dict[str, float]] = {}
    for result in breakdowns:
        n = result.get("bls_requests", 0)
        requests += n
        for stage, us in result["bls_stages_us"].items():
            stages[stage] = stages.get(stage, 0.0) + us * n
        for model, row in result["triton_models"].items():
            entry = models.setdefault(model, {"requests": 0, "executions": 0})
            entry["requests"] += row["requests"]
            entry["executions"] += row["executions"]
            for key, value in row.items():
                if key.endswith("_us") and value is not None:
                    entry[key] = entry.get(key, 0.0) + value * row["requests"]
    for entry in models.values():
        for key in [k for k in entry if k.endswith("_us")]:
            entry[key] = round(entry[key] / entry["requests"], 1) if entry["requests"] else None
    return {
        "bls_requests": requests,
        "bls_stages_us": {stage: round(total / requests, 1) for stage, total in stages.items()} if requests else {},
        "triton_models": models,
    }


def _pair_row(concurrency: int, a: PerfPoint, b: PerfPoint, a_name: str, b_name: str) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        f"{a_name}_throughput": round(a.throughput, 2),
        f"{b_name}_throughput": round(b.throughput, 2),
        "throughput_ratio": round(a.throughput / b.throughput, 3) if b.throughput else None,
        f"{a_name}_p50_ms": round(a.p50_ms, 2),
        f"{b_name}_p50_ms": round(b.p50_ms, 2),
        f"{a_name}_p99_ms": round(a.p99_ms, 2),
        f"{b_name}_p99_ms": round(b.p99_ms, 2),
        "p99_ratio": round(a.p99_ms / b.p99_ms, 3) if b.p99_ms else None,
        **(
            {f"{a_name}_p95_ms": round(a.p95_ms, 2), f"{b_name}_p95_ms": round(b.p95_ms, 2)}
            if a.p95_ms is not None and b.p95_ms is not None
            else {}
        ),
    }
