"""Background traffic during a swap: requests sent, failed, and which versions answered."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any


class TrafficLoop:
    """`concurrency` threads routing `records` round-robin until stop(); one client per thread."""

    def __init__(self, grpc_url: str, records: Sequence[Mapping[str, Any]], concurrency: int = 2, max_tier: str | None = "t2") -> None:
        self.grpc_url, self.records, self.concurrency, self.max_tier = grpc_url, list(records), concurrency, max_tier
        self.sent = 0
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()  # "bls/repository" version pairs that answered
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self, offset: int) -> None:
        from clients.route_client import RouteClient

        client = RouteClient(self.grpc_url)
        i = offset
        while not self._stop.is_set():
            record = self.records[i % len(self.records)]
            try:
                answer = client.route(record["text"], record["task"], max_tier=self.max_tier, timeout_s=120)
                key, ok = f"{answer.metadata['bls_version']}/{answer.metadata['repository_version']}", True
            except Exception as err:  # every failure is counted, with its message
                key, ok = f"{type(err).__name__}: {str(err)[:120]}", False
            with self._lock:
                self.sent += 1
                (self.versions if ok else self.errors)[key] += 1
                self.failed += 0 if ok else 1
            i += self.concurrency
        client.close()

    def start(self) -> "TrafficLoop":
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(self.concurrency)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        for thread in self._threads:
            thread.join(180)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"sent": self.sent, "failed": self.failed, "answered_by_bls/repository_version": dict(self.versions), "errors": dict(self.errors)}

    def wait_for(self, requests: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.sent < requests and time.monotonic() < deadline:
            time.sleep(0.1)
