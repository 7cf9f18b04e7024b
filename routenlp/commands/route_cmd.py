"""`routenlp route`: send requests to the `routenlp` entry model with tritonclient and print the
answer and its routing metadata. One text (`--task TASK "text"`) or a JSONL file (`--file`, one
{"task", "text"[, "max_tier", "request_id", "policy"]} object per line; output is JSONL)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}


def register(sub) -> None:
    parser = sub.add_parser("route", help="route one text or a JSONL file of requests through the running server")
    parser.add_argument("text", nargs="?", help="the request text (or use --file)")
    parser.add_argument("--task", help="task name, e.g. cs_intent, fin_ner (required with a text)")
    parser.add_argument("--file", type=Path, help="JSONL requests: {\"task\": ..., \"text\": ...} per line")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--url", default=None, help="server address (default 127.0.0.1:8001 gRPC, 127.0.0.1:8000 HTTP)")
    parser.add_argument("--max-tier", default=None, help="highest tier allowed (t1..t4)")
    parser.add_argument("--policy", default=None, help="routenlp (default) or always-t1..always-t4")
    parser.add_argument("--request-id", default=None)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (gRPC)")
    parser.set_defaults(handler=run)


def _requests(args) -> list[dict]:
    if args.file is None:
        return [{"task": args.task, "text": args.text, "max_tier": args.max_tier, "request_id": args.request_id, "policy": args.policy}]
    requests = []
    for number, line in enumerate(args.file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{args.file}:{number}: not JSON: {err}") from None
        if not isinstance(item, dict) or "text" not in item or "task" not in item:
            raise ValueError(f"{args.file}:{number}: need an object with \"task\" and \"text\"")
        requests.append({"max_tier": args.max_tier, "policy": args.policy, **item})
    return requests


def run(args) -> int:
    from clients.route_client import RouteClient
    from tritonclient.utils import InferenceServerException

    if (args.text is None) == (args.file is None):
        print("error: give either a text (with --task) or --file", file=sys.stderr)
        return 2
    if args.text is not None and not args.task:
        print("error: --task is required with a text", file=sys.stderr)
        return 2
    try:
        requests = _requests(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    client = RouteClient(args.url or DEFAULT_URLS[args.protocol], args.protocol)
    failures = 0
    try:
        for item in requests:
            try:
                answer = client.route(
                    item["text"], item["task"], max_tier=item.get("max_tier"), request_id=item.get("request_id"),
                    policy=item.get("policy"), timeout_s=args.timeout,
                )
            except InferenceServerException as err:
                failures += 1
                if args.file is None:
                    print(f"error: {err.message() if hasattr(err, 'message') else err}", file=sys.stderr)
                else:
                    print(json.dumps({"request_id": item.get("request_id"), "task": item["task"], "error": str(err.message() if hasattr(err, "message") else err)}))
                continue
            if args.file is None:
                print(answer.output)
                print(json.dumps(answer.metadata, indent=2, sort_keys=True))
            else:
                print(json.dumps({"output": answer.output, "metadata": answer.metadata}, sort_keys=True))
    finally:
        client.close()
    return 1 if failures else 0
