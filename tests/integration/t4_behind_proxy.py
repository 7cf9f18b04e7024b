"""A Deployment whose T4 is a real vLLM endpoint behind clients/fault_proxy.py, so a test can break
the wire to T4 and mend it. The endpoint and the deployment start in parallel (each loads models
for up to minutes on CPU); all three stop at the end of the block."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clients.fault_proxy import FaultProxy
from routenlp.deployment import Deployment
from routenlp.t4_endpoint import T4Endpoint


@contextmanager
def deployment_with_t4_behind_proxy(t4: T4Endpoint, repository: Path, timeout_s: float, **deployment_args) -> Iterator[tuple[Deployment, FaultProxy]]:
    proxy = FaultProxy(t4.base_url.removesuffix("/v1")).start()
    deployment = Deployment(repository, local_t4=False, t4_url=proxy.base_url, **deployment_args)
    failures: list[BaseException] = []

    def start_t4():
        try:
            t4.start(timeout_s=timeout_s)
        except BaseException as err:  # re-raised in the caller's thread
            failures.append(err)

    thread = threading.Thread(target=start_t4)
    thread.start()
    try:
        deployment.start(timeout_s=timeout_s)
        thread.join()
        if failures:
            raise failures[0]
        yield deployment, proxy
    finally:
        thread.join()
        deployment.stop()
        t4.stop()
        proxy.stop()
