"""Run the real perf_analyzer against a Triton model and parse its CSV report."""

from __future__ import annotations

import csv
import json
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from routenlp.stack import StackPaths


class PerfAnalyzerError(RuntimeError):
    pass


@dataclass(frozen=True)
class PerfPoint:
    concurrency: int
    throughput: float  # inferences per second
    p50_ms: float
    p99_ms: float
    avg_ms: float
    p95_ms: float | None = None  # None: a CSV without the column


def write_input_data(path: Path, rows: Sequence[Mapping[str, Sequence]]) -> Path:
    """perf_analyzer --input-data JSON: one entry per request, each a mapping input name -> values
    (shape [len(values)]) or -> {"content": flat values, "shape": [...]} for other shapes.
    String values go as-is (perf_analyzer encodes BYTES tensors itself)."""

    def tensor(values):
        if isinstance(values, Mapping):
            return {"content": list(values["content"]), "shape": list(values["shape"])}
        return {"content": list(values), "shape": [len(values)]}

    payload = {"data": [{name: tensor(values) for name, values in row.items()} for row in rows]}
    path.write_text(json.dumps(payload))
    return path


def parse_csv(path: Path) -> list[PerfPoint]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise PerfAnalyzerError(f"perf_analyzer wrote no measurements to {path}")
    us = 1e-3  # the CSV reports latencies in microseconds
    return [
        PerfPoint(
            concurrency=int(row["Concurrency"]),
            throughput=float(row["Inferences/Second"]),
            p50_ms=float(row["p50 latency"]) * us,
            p99_ms=float(row["p99 latency"]) * us,
            avg_ms=sum(float(row[k]) for k in ("Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output", "Client Recv") if k in row) * us,
            p95_ms=float(row["p95 latency"]) * us if row.get("p95 latency") else None,
        )
        for row in rows
    ]


def run_perf_analyzer(
    model: str,
    url: str,
    *,
    protocol: str = "grpc",
    input_data: Path | None = None,
    concurrency: tuple[int, int] = (1, 1),
    measurement_ms: int = 2000,
    batch_size: int = 1,
    stability_percent: int = 50,
    extra_args: Sequence[str] = (),
    timeout_s: float = 600.0,
) -> list[PerfPoint]:
    paths = StackPaths.discover()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "perf.csv"
        cmd = [
            str(paths.perf_analyzer_bin),
            "-m", model,
            "-u", url,
            "-i", protocol,
            "-b", str(batch_size),
            "--concurrency-range", f"{concurrency[0]}:{concurrency[1]}",
            "--measurement-interval", str(measurement_ms),
            # A shared 2-core box rarely holds perf_analyzer's default 10% stability; without a
            # stable window it writes no report at all, so widen the band and allow more trials.
            "--stability-percentage", str(stability_percent),
            "--max-trials", "10",
            "-f", str(report),
        ]
        if input_data is not None:
            cmd += ["--input-data", str(input_data)]
        cmd += list(extra_args)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=paths.server_env(), timeout=timeout_s)
        if proc.returncode != 0 or not report.exists():
            raise PerfAnalyzerError(f"perf_analyzer failed ({proc.returncode}): {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return parse_csv(report)


def perf_analyzer_version() -> str:
    paths = StackPaths.discover()
    proc = subprocess.run([str(paths.perf_analyzer_bin), "--version"], capture_output=True, text=True, env=paths.server_env(), timeout=60)
    if proc.returncode != 0:
        raise PerfAnalyzerError((proc.stderr or proc.stdout).strip()[-500:])
    # It prints its version on stderr.
    return (proc.stdout + proc.stderr).strip().splitlines()[-1]
