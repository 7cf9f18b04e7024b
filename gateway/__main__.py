"""`python -m gateway`: serve the OpenAI-compatible gateway (uvicorn, one worker) in front of a
running Triton. `routenlp serve` starts it this way (gateway/process.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from gateway.app import GatewaySettings, create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--repository", type=Path, required=True, help="the model repository Triton serves (for the routenlp serving config)")
    parser.add_argument("--grpc-url", required=True, help="Triton's gRPC address, host:port")
    parser.add_argument("--metrics-url", required=True, help="Triton's metrics URL (http://host:port/metrics)")
    parser.add_argument("--state-dir", type=Path, required=True, help="tenants.toml and the budget ledger")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--timeout-s", type=float, default=120.0, help="longest wait for one routed answer")
    args = parser.parse_args(argv)
    from routenlp.deployment import latest_serving_config, latest_version_dir

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = GatewaySettings(latest_serving_config(args.repository), latest_version_dir(args.repository), args.grpc_url, args.metrics_url, args.state_dir, args.timeout_s)
    # access_log off: the request line is noise at this rate, and logs must never hold keys
    uvicorn.run(create_app(settings), host=args.host, port=args.port, loop="uvloop", http="httptools", access_log=False, log_level="warning", timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
