"""The gateway's added latency: the same requests sent straight to `routenlp` over gRPC and through
the OpenAI-compatible gateway, interleaved pair by pair (which side goes first alternates), at
each concurrency level. Requests are dev texts of the structured tasks with MAX_TIER t1 (router +
T1, a few ms), so the gateway's share is not drowned by generation time.

Both sides are measured from a Python client (tritonclient's gRPC client vs httpx posting OpenAI
chat bodies, keep-alive), so client-side costs are in both. On a shared machine the absolute
numbers move; the paired differences and ratios in one run are what to read.

    python -m clients.gateway_overhead --repository model_repository --out results/gateway.json
    python -m clients.gateway_overhead --grpc-url H:8001 --gateway-url http://H:8080/v1 --key KEY
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from clients.route_client import RouteClient
from gateway.tenants import ENV_TENANTS_JSON, hash_key

STRUCTURED_TASKS = ("cs_intent", "fin_ner", "legal_clause", "legal_risk")
WARMUP_PAIRS = 8


def _ms(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


def _worker(grpc_url: str, gateway_url: str, key: str, records: Sequence[dict], first: int, direct: list, gateway: list) -> None:
    client = RouteClient(grpc_url)
    http = httpx.Client(base_url=gateway_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def via_grpc(record: dict) -> float:
        started = time.perf_counter()
        client.route(record["text"], record["task"], max_tier="t1")
        return time.perf_counter() - started

    def via_gateway(record: dict) -> float:
        body = {"model": f"routenlp-{record['task']}", "messages": [{"role": "user", "content": record["text"]}], "max_tier": "t1"}
        started = time.perf_counter()
        response = http.post("/chat/completions", json=body)
        response.raise_for_status()
        response.json()
        return time.perf_counter() - started

    try:
        for i, record in enumerate(records):
            pair = (via_grpc, via_gateway) if (first + i) % 2 == 0 else (via_gateway, via_grpc)
            timings = {call: call(record) for call in pair}
            direct.append(timings[via_grpc] * 1e3)
            gateway.append(timings[via_gateway] * 1e3)
    finally:
        client.close()
        http.close()


def measure(grpc_url: str, gateway_url: str, key: str, records: Sequence[dict], concurrency: int, gateway_pid: int | None = None) -> dict[str, Any]:
    """Each of `concurrency` threads sends its share of `records` as interleaved pairs. With the
    gateway's pid, also its CPU time per request: what it costs whatever the machine's load."""
    _worker(grpc_url, gateway_url, key, records[:WARMUP_PAIRS], 0, [], [])
    cpu_before = _cpu_seconds(gateway_pid)
    direct: list[float] = []
    gateway: list[float] = []
    threads = [threading.Thread(target=_worker, args=(grpc_url, gateway_url, key, records[i::concurrency], i, direct, gateway)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    added = np.asarray(gateway) - np.asarray(direct)  # pairs line up only per thread; the medians are what is compared
    row = {
        "concurrency": concurrency,
        "pairs": len(direct),
        "direct_p50_ms": _ms(direct, 50),
        "direct_p95_ms": _ms(direct, 95),
        "gateway_p50_ms": _ms(gateway, 50),
        "gateway_p95_ms": _ms(gateway, 95),
    }
    row["added_p50_ms"] = round(row["gateway_p50_ms"] - row["direct_p50_ms"], 3)
    row["added_p95_ms"] = round(row["gateway_p95_ms"] - row["direct_p95_ms"], 3)
    row["paired_added_median_ms"] = round(float(np.median(added)), 3) if concurrency == 1 else None
    row["p50_ratio"] = round(row["gateway_p50_ms"] / row["direct_p50_ms"], 3)
    if gateway_pid:
        row["gateway_cpu_ms_per_request"] = round((_cpu_seconds(gateway_pid) - cpu_before) * 1e3 / len(gateway), 3)
    return row


def _cpu_seconds(pid: int | None) -> float:
    if not pid:
        return 0.0
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def dev_records(config, per_task: int) -> list[dict]:
    from export.pipeline import PortfolioBuild
    from routenlp.portfolio import load_portfolio

    pools = PortfolioBuild(load_portfolio(profile=config.profile), progress=False).pools.dev
    by_task = [[{"task": task, "text": r["text"]} for r in pools[task][:per_task]] for task in STRUCTURED_TASKS]
    return [record for group in zip(*by_task) for record in group]  # tasks interleaved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.gateway_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="started here (without T4) unless --grpc-url is given")
    parser.add_argument("--grpc-url", default="")
    parser.add_argument("--gateway-url", default="", help="the gateway's /v1 base URL")
    parser.add_argument("--key", default="", help="a tenant key of that gateway")
    parser.add_argument("--per-task", type=int, default=60, help="dev texts per structured task (pairs per level: 4x this)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=Path("results/gateway.json"))
    args = parser.parse_args(argv)
    from routenlp.deployment import Deployment, latest_serving_config
    from routenlp.table import format_table

    config = latest_serving_config(args.repository)
    records = dev_records(config, args.per_task)
    deployment = None
    grpc_url, gateway_url, key = args.grpc_url, args.gateway_url, args.key
    if not grpc_url:
        key = "rnlp-bench-" + uuid.uuid4().hex
        tenants = {"tenants": {"bench": {"keys": [hash_key(key)], "daily_usd": 1e9}}}
        state = Path("var") / "gateway_bench"
        deployment = Deployment(args.repository, state_dir=state, local_t4=False, openai_port=0, extra_env={ENV_TENANTS_JSON: json.dumps(tenants)})
        deployment.start()
        grpc_url, gateway_url = deployment.server.grpc_url, deployment.gateway.base_url
        print(f"deployment ready in {deployment.startup_s:.0f} s (gRPC {grpc_url}, gateway {gateway_url})", flush=True)
    load_before = os.getloadavg()
    try:
        pid = deployment.gateway.process.pid if deployment else None
        rows = [measure(grpc_url, gateway_url, key, records, c, pid) for c in args.concurrency]
    finally:
        if deployment is not None:
            deployment.stop()
    result = {
        "command": "python -m clients.gateway_overhead " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "requests": f"{len(records)} dev texts of {', '.join(STRUCTURED_TASKS)} with MAX_TIER t1, each sent both ways per level",
        "note": "shared 2-core machine: sides interleaved pair by pair; read the differences and ratios",
        "profile": config.profile,
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2), "cores": os.cpu_count()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table([{k: "" if v is None else v for k, v in row.items()} for row in rows]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
