"""Sustained traffic on a deployment of the model repository until tritonserver dies or time runs
out: the measurement behind README "Reliability" (the Triton 2.51 python-backend crash).

  .venv/bin/python scripts/crash_repro.py 400 --concurrency 6 --policy always-t4 \
      --models routenlp,router,t1_cs_intent,t1_fin_ner,t1_legal_clause,t1_legal_risk

Routes 60 dev records per task per round (alternating Always-T4 and RouteNLP unless --policy is
given) and prints one line per round; the last line says whether the server is alive. Its log is in
--state-dir (default /tmp/crash_repro); `dmesg | grep segfault` shows whether a stub faulted first.

Each round line also gives the scheduling lateness seen by a probe process that sleeps 300 ms in a
loop (the python-backend stub heartbeat's period): how late the machine let a sleeper wake up; and,
from /proc/PID/task/TID/schedstat, the largest mean run-queue wait per wakeup, over one second, of
the stubs' heartbeat-like threads (woken 2-5 times a second): the same lateness inside Triton's own
scheduling group, where the probe (in this script's session) is not.
--repository runs another repository (e.g. a copy whose adapters are an older commit's).

--fake-t4 SECONDS replaces the vLLM T4 endpoint by an OpenAI-compatible stand-in in this process
that answers every completion with the same short text after SECONDS: the BLS still makes real
HTTP calls, but no vLLM server runs beside Triton (separates "HTTP in the stub" from "a busy vLLM").
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import shutil
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import routenlp.deployment as deployment_module  # noqa: E402
from clients.served_eval import route_records  # noqa: E402
from routenlp.data.records import load_split  # noqa: E402
from routenlp.t4_endpoint import LOCAL_T4_NICE, T4Endpoint  # noqa: E402
from routenlp_core.paths import MODEL_REPOSITORY_DIR  # noqa: E402
from routenlp_core.tasks import TASK_NAMES  # noqa: E402


def fake_t4(delay_s: float) -> ThreadingHTTPServer:
    """A stand-in T4 at http://127.0.0.1:PORT/v1: greedy-looking completions after `delay_s`."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(delay_s)
            body = json.dumps({
                "choices": [{"text": " positive", "logprobs": {"token_logprobs": [-0.01]}}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 1},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # no per-request lines on stderr
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _probe(latest_ms, stop) -> None:
    """Sleeps 300 ms in a loop, keeping the largest lateness (ms) since the parent last reset it."""
    while not stop.is_set():
        before = time.perf_counter()
        time.sleep(0.3)
        late = (time.perf_counter() - before - 0.3) * 1e3
        with latest_ms.get_lock():
            latest_ms.value = max(latest_ms.value, late)


def _schedstat(tid_dir: Path) -> tuple[int, int] | None:
    """(nanoseconds waited on a run queue, timeslices) of one thread, from /proc/PID/task/TID/schedstat."""
    try:
        _, waited, slices = (int(v) for v in (tid_dir / "schedstat").read_text().split())
    except (OSError, ValueError):
        return None
    return waited, slices


def _stub_threads(server_pid: int) -> list[Path]:
    threads = []
    for child in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split():
        try:
            if b"triton_python_backend_stub" in Path(f"/proc/{child}/cmdline").read_bytes():
                threads.extend(Path(f"/proc/{child}/task").iterdir())
        except OSError:
            continue
    return threads


def _heartbeat_watch(server_pid: int, worst_ms: list, stop: threading.Event) -> None:
    """Each second, the mean run-queue wait per wakeup of the stubs' heartbeat-like threads (those
    woken 2-5 times in the second, as a 300 ms sleeper is); keeps the largest in worst_ms[0]."""
    before: dict[Path, tuple[int, int]] = {}
    while not stop.wait(1.0):
        try:
            threads = _stub_threads(server_pid)
        except OSError:
            return
        for thread in threads:
            now = _schedstat(thread)
            if now is None:
                continue
            last = before.get(thread)
            before[thread] = now
            if last is not None and 2 <= now[1] - last[1] <= 5:
                worst_ms[0] = max(worst_ms[0], (now[0] - last[0]) / (now[1] - last[1]) / 1e6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seconds", type=float)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--policy", default="", help="one policy for every round (default: alternate always-t4 / routenlp)")
    parser.add_argument("--models", default="", help="comma-separated models to load (default: all)")
    parser.add_argument("--per-task", type=int, default=60)
    parser.add_argument("--fake-t4", type=float, default=None, metavar="SECONDS", help="stand-in T4 answering after SECONDS instead of vLLM")
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/crash_repro"))
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY_DIR)
    parser.add_argument("--t4-nice", default=str(LOCAL_T4_NICE), help="the local T4 endpoint's priority ('none': the caller's, as before 2026-12-04)")
    args = parser.parse_args()
    if args.models:  # load a subset: which models must be present for the crash
        deployment_module.TritonServer = functools.partial(deployment_module.TritonServer, load_models=tuple(args.models.split(",")))
    if args.t4_nice != str(LOCAL_T4_NICE):
        deployment_module.T4Endpoint = functools.partial(T4Endpoint, nice=None if args.t4_nice == "none" else int(args.t4_nice))
    records = [r for task in TASK_NAMES for r in load_split(task, "dev")[: args.per_task]]
    shutil.rmtree(args.state_dir, ignore_errors=True)
    t4_url = ""
    if args.fake_t4 is not None:
        t4_url = f"http://127.0.0.1:{fake_t4(args.fake_t4).server_address[1]}/v1"
    deployment = deployment_module.Deployment(args.repository, state_dir=args.state_dir, local_t4=not t4_url, t4_url=t4_url).start()
    print(f"ready in {deployment.startup_s:.0f} s", flush=True)
    late_ms, stop_probe = multiprocessing.Value("d", 0.0), multiprocessing.Event()
    probe = multiprocessing.Process(target=_probe, args=(late_ms, stop_probe), daemon=True)
    probe.start()
    heartbeat_ms, stop_watch = [0.0], threading.Event()
    threading.Thread(target=_heartbeat_watch, args=(deployment.server.process.pid, heartbeat_ms, stop_watch), daemon=True).start()
    started, sent, failed, rounds = time.time(), 0, 0, 0
    try:
        while time.time() - started < args.seconds and deployment.server.exit_status() is None:
            policy = args.policy or ("always-t4" if rounds % 2 == 0 else "routenlp")
            answers = route_records(deployment.server.grpc_url, records, policy, concurrency=args.concurrency, progress=False)
            rounds, sent = rounds + 1, sent + len(answers)
            errors = [a.error for a in answers if a.error is not None]
            failed += len(errors)
            paths = Counter("/".join(a.metadata["path"]) for a in answers if a.metadata)
            total_ms = sorted(a.metadata["total_ms"] for a in answers if a.metadata)
            p50 = f"{total_ms[len(total_ms) // 2]:.0f} ms" if total_ms else "-"
            with late_ms.get_lock():
                late, late_ms.value = late_ms.value, 0.0
            waited, heartbeat_ms[0] = heartbeat_ms[0], 0.0
            print(
                f"{time.time() - started:6.0f} s round {rounds} {policy}: sent {sent}, failed {failed}, p50 {p50}, "
                f"probe late <= {late:.0f} ms, stub heartbeat wait <= {waited:.0f} ms/wakeup, paths {dict(paths)}",
                flush=True,
            )
            if errors:
                print(f"  first error: {errors[0][:300]}", flush=True)
    finally:
        stop_probe.set()
        stop_watch.set()
        ended = deployment.server.exit_status()
        print(f"RESULT {'died: ' + ended if ended else 'alive'} after {time.time() - started:.0f} s, {sent} sent, {failed} failed", flush=True)
        deployment.stop()
    return 1 if ended else 0


if __name__ == "__main__":
    raise SystemExit(main())
