"""`routenlp demo`: the main job on the embedded default.

For now (foundation stage) it checks the committed benchmark, starts a real tritonserver on a
generated repository and sends one dev request per task over gRPC. Routing through the tier
portfolio replaces the self-test model once the portfolio is built.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from routenlp.paths import RESULTS_DIR
from routenlp.table import format_table


def register(sub) -> None:
    parser = sub.add_parser("demo", help="build/check the benchmark, start Triton, answer requests")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import numpy as np
    import tritonclient.grpc as grpcclient

    from routenlp.data import benchmark_stats, load_split
    from routenlp.paths import BENCHMARK_DIR
    from routenlp.selftest.repository import build_selftest_repository
    from routenlp.tasks import TASK_NAMES
    from routenlp.triton_server import TritonServer

    print(format_table(benchmark_stats(BENCHMARK_DIR)))
    with tempfile.TemporaryDirectory() as tmp:
        repo = build_selftest_repository(Path(tmp) / "model_repository")
        log = RESULTS_DIR / "demo_tritonserver.log"
        print(f"\nstarting tritonserver on {repo} (log {log}) ...")
        with TritonServer(repo, log) as server:
            print(f"Triton {server.metadata()['version']} ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}")
            client = grpcclient.InferenceServerClient(server.grpc_url)
            rows = []
            for task in TASK_NAMES:
                record = load_split(task, "dev")[0]
                text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
                text.set_data_from_numpy(np.array([[record["text"].encode()]], dtype=object))
                started = time.perf_counter()
                result = client.infer("echo", [text])
                rows.append(
                    {
                        "task": task,
                        "request": record["text"][:50].replace("\n", " "),
                        "chars_echoed": int(result.as_numpy("LENGTH").ravel()[0]),
                        "latency_ms": f"{(time.perf_counter() - started) * 1e3:.2f}",
                    }
                )
            client.close()
    print(format_table(rows))
    return 0
