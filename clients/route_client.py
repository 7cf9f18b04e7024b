"""Call the `routenlp` entry model with tritonclient (gRPC by default, or HTTP)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

ENTRY_MODEL = "routenlp"


@dataclass(frozen=True)
class RoutedAnswer:
    output: str
    metadata: dict[str, Any]


def _client_module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    elif protocol == "http":
        import tritonclient.http as module
    else:
        raise ValueError(f"unknown protocol {protocol!r}; use grpc or http")
    return module


class RouteClient:
    def __init__(self, url: str, protocol: str = "grpc"):
        self.module = _client_module(protocol)
        self.client = self.module.InferenceServerClient(url)

    def _tensor(self, name: str, value: str | bytes):
        tensor = self.module.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value.encode() if isinstance(value, str) else value]], dtype=object))
        return tensor

    def route(
        self, text: str | bytes, task: str, max_tier: str | None = None, request_id: str | None = None, policy: str | None = None, timeout_s: float | None = None
    ) -> RoutedAnswer:
        inputs = [self._tensor("TEXT", text), self._tensor("TASK", task)]
        for name, value in (("MAX_TIER", max_tier), ("REQUEST_ID", request_id), ("POLICY", policy)):
            if value:
                inputs.append(self._tensor(name, value))
        kwargs = {"client_timeout": timeout_s} if timeout_s and self.module.__name__.endswith("grpc") else {}
        result = self.client.infer(ENTRY_MODEL, inputs, **kwargs)
        output = result.as_numpy("OUTPUT").ravel()[0].decode()
        metadata = json.loads(result.as_numpy("METADATA").ravel()[0])
        return RoutedAnswer(output, metadata)

    def close(self) -> None:
        self.client.close()
