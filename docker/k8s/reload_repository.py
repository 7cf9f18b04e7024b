"""Load the newest repository version on every Triton pod behind a (headless) Service name.

Used by the coopt Job after it wrote version N+1 (docker/k8s/coopt-job.yaml). Per pod, one at a
time: list the repository (POST /v2/repository/index), load every model with the tiers first and
the `routenlp` BLS last (so it never routes to a tier still loading), then wait for the BLS to be
ready. The repository API is restricted, so each call carries the header `admin-key` from
ROUTENLP_ADMIN_KEY. Stops at the first pod that fails, leaving the rest on the old version.
Standard library only: it runs in any image with Python 3.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request

BLS_MODEL = "routenlp"
ADMIN_HEADER = "admin-key"


def pod_urls(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = sorted({info[4][0] for info in infos})
    return [f"http://[{a}]:{port}" if ":" in a else f"http://{a}:{port}" for a in addresses]


def call(url: str, key: str, body: dict | None = None, timeout: float = 600.0) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header(ADMIN_HEADER, key)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def load_order(index: list[dict]) -> list[str]:
    names = sorted({entry["name"] for entry in index})
    return [n for n in names if n != BLS_MODEL] + ([BLS_MODEL] if BLS_MODEL in names else [])


def reload_pod(base: str, key: str, ready_timeout_s: float) -> list[str]:
    order = load_order(call(f"{base}/v2/repository/index", key, body={}) or [])
    if BLS_MODEL not in order:
        raise RuntimeError(f"{base}: the repository has no {BLS_MODEL!r} model")
    for name in order:
        call(f"{base}/v2/repository/models/{name}/load", key, body={})
    deadline = time.monotonic() + ready_timeout_s
    while True:
        try:
            call(f"{base}/v2/models/{BLS_MODEL}/ready", key, timeout=5.0)
            return order
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base}: {BLS_MODEL} not ready after {ready_timeout_s:.0f}s") from None
            time.sleep(2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="triton-pods", help="Service name resolving to every Triton pod")
    parser.add_argument("--port", type=int, default=8000, help="Triton HTTP port")
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for the BLS per pod")
    args = parser.parse_args(argv)
    key = os.environ.get("ROUTENLP_ADMIN_KEY", "").strip()
    if not key:
        print("reload: ROUTENLP_ADMIN_KEY is not set", file=sys.stderr)
        return 2
    urls = pod_urls(args.host, args.port)
    for base in urls:
        try:
            order = reload_pod(base, key, args.ready_timeout)
        except (urllib.error.URLError, OSError, RuntimeError, ValueError) as err:
            print(f"reload: {base}: {err}", file=sys.stderr)
            return 1
        print(f"reload: {base}: loaded {', '.join(order)}", flush=True)
    print(f"reload: {len(urls)} pod(s) serve the newest version")
    return 0


if __name__ == "__main__":
    sys.exit(main())
