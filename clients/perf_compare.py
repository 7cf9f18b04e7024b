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

ENTRY_MODEL = "routenlp"
OVERHEAD_TASK = "legal_risk"  # a structured task with a T1 head


def entry_rows(records: Sequence[Mapping[str, Any]], **extra: str) -> list[dict[str, list[str]]]:
    """perf_analyzer rows for the entry model: TEXT, TASK (+ POLICY / MAX_TIER), shape [1] each."""
    return [{"TEXT": [r["text"]], "TASK": [r["task"]], **{name: [value] for name, value in extra.items()}} for r in records]


def t1_rows(records: Sequence[Mapping[str, Any]], tokenizer, max_len: int, batched: bool = True) -> list[dict[str, dict]]:
    """Direct t1_<task> rows: input_ids / attention_mask, encoded as the BLS encodes them; shape [T]
    for a model with Triton batching (perf_analyzer adds the batch axis), else [1, T]."""
    from export.encoder import encode_texts

    rows = []
    for ids in encode_texts(tokenizer, [r["text"] for r in records], max_len):
        shape = [len(ids)] if batched else [1, len(ids)]
        rows.append({"input_ids": {"content": ids, "shape": shape}, "attention_mask": {"content": [1] * len(ids), "shape": shape}})
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


def routing_overhead(url: str, records, tokenizer, max_len: int, work_dir: Path, concurrencies: Sequence[int], measurement_ms: int = 3000, log=print) -> list[dict[str, Any]]:
    task_records = [r for r in records if r["task"] == OVERHEAD_TASK]
    routed = write_input_data(work_dir / "routed_t1.json", entry_rows(task_records, MAX_TIER="t1"))
    direct = write_input_data(work_dir / "direct_t1.json", t1_rows(task_records, tokenizer, max_len))
    rows = []
    for c in concurrencies:
        ours = _point(ENTRY_MODEL, url, routed, c, measurement_ms)
        plain = _point(f"t1_{OVERHEAD_TASK}", url, direct, c, measurement_ms)
        row = _pair_row(c, ours, plain, "routed_t1", "direct_t1")
        row["added_p50_ms"] = round(ours.p50_ms - plain.p50_ms, 2)
        rows.append(row)
        log(f"  concurrency {c}: routed-on-T1 p50 {ours.p50_ms:.2f} ms vs direct t1 {plain.p50_ms:.2f} ms")
    return rows


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
    }
