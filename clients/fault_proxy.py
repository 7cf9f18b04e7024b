"""A fault-injecting HTTP proxy for the T4 endpoint (chaos testing of the T4 path).

Sits between the BLS and a real OpenAI-compatible endpoint: in mode "pass" it forwards requests
(headers included, so auth still works); otherwise every request gets the injected fault:
"down" (connection closed without an answer), "status:429" / "status:500" (that status with a JSON
error), "malformed" (HTTP 200 with a body that is not JSON), "slow:SECONDS" (wait, then forward),
"echo_key:STATUS" (that status with the request's Authorization header in the error message, as
OpenAI's 401 "Incorrect API key provided: ..." does, so a test sees whether the client masks it).
It counts the requests it saw, so a test can check the client's retries and its circuit breaker.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class FaultProxy:
    def __init__(self, upstream: str, port: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:PORT (no /v1)
        self.mode = "pass"
        self.hits = 0
        self._lock = threading.Lock()
        # port 0: the kernel picks one while binding it, so no other process can take it first
        self._server = ThreadingHTTPServer(("127.0.0.1", port or 0), self._handler())
        self.port = self._server.server_address[1]
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._http = httpx.Client(timeout=120.0)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def set_mode(self, mode: str) -> None:
        with self._lock:
            self.mode, self.hits = mode, 0

    def _count(self) -> str:
        with self._lock:
            self.hits += 1
            return self.mode

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: tests print their own summary
                pass

            def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (its timeout): exactly what "slow" is for

            def _forward(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                mode = proxy._count()
                if mode == "down":
                    self.close_connection = True
                    self.connection.close()
                    return
                if mode.startswith("status:"):
                    status = int(mode.split(":", 1)[1])
                    return self._reply(status, b'{"error": {"message": "injected fault"}}')
                if mode.startswith("echo_key:"):
                    status = int(mode.split(":", 1)[1])
                    message = f"Incorrect API key provided: {self.headers.get('Authorization', '')}"
                    return self._reply(status, json.dumps({"error": {"message": message}}).encode())
                if mode == "malformed":
                    return self._reply(200, b"<html>not json</html>", "text/html")
                if mode.startswith("slow:"):
                    time.sleep(float(mode.split(":", 1)[1]))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                upstream = proxy._http.request(method, proxy.upstream + self.path, content=body, headers=headers)
                self._reply(upstream.status_code, upstream.content, upstream.headers.get("content-type", "application/json"))

            def do_POST(self):
                self._forward("POST")

            def do_GET(self):
                self._forward("GET")

        return Handler

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
