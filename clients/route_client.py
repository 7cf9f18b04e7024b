"""Call the `routenlp` entry model with tritonclient (gRPC by default, or HTTP)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from routenlp_core.contract import BLS_MODEL as ENTRY_MODEL
from routenlp_core.contract import MAX_TIER, METADATA, OUTPUT, POLICY, REQUEST_ID, TASK, TEXT


def answer_from_outputs(output_array: Any, metadata_array: Any, request_id: str | None) -> "RoutedAnswer":
    """The RoutedAnswer in a response's OUTPUT and METADATA tensors, checked before it is trusted.

    A response without both tensors, or whose metadata names another request, raises
    InferenceServerException (callers already count those as failed requests). Why: when Triton
    2.51's python backend wrongly declares a busy stub unhealthy (execute > 1 s plus a late health
    heartbeat), the next batch on that instance reads the previous batch's response; seen here as an
    answer with no METADATA right before the server aborted (README, Reliability).
    """
    from tritonclient.utils import InferenceServerException

    if output_array is None or metadata_array is None:
        missing = [name for name, array in ((OUTPUT, output_array), (METADATA, metadata_array)) if array is None]
        raise InferenceServerException(f"malformed response from {ENTRY_MODEL}: no {' or '.join(missing)} tensor")
    try:
        output = output_array.ravel()[0].decode()
        metadata = json.loads(metadata_array.ravel()[0])
    except (IndexError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise InferenceServerException(f"malformed response from {ENTRY_MODEL}: {type(err).__name__}: {err}") from None
    if request_id and isinstance(metadata, dict) and metadata.get("request_id") != request_id:
        raise InferenceServerException(
            f"response from {ENTRY_MODEL} belongs to request {metadata.get('request_id')!r}, not {request_id!r}"
        )
    return RoutedAnswer(output, metadata)


@dataclass(frozen=True)
class RoutedAnswer:
    output: str
    metadata: dict[str, Any]


def entry_inputs(module, text: str | bytes, task: str, max_tier: str | None = None, request_id: str | None = None, policy: str | None = None) -> list:
    """The entry model's input tensors (shape [1, 1] BYTES; optional ones only when given), built
    with `module`'s InferInput (tritonclient.grpc, .grpc.aio or .http)."""

    def tensor(name: str, value: str | bytes):
        inferred = module.InferInput(name, [1, 1], "BYTES")
        inferred.set_data_from_numpy(np.array([[value.encode() if isinstance(value, str) else value]], dtype=object))
        return inferred

    inputs = [tensor(TEXT, text), tensor(TASK, task)]
    for name, value in ((MAX_TIER, max_tier), (REQUEST_ID, request_id), (POLICY, policy)):
        if value:
            inputs.append(tensor(name, value))
    return inputs


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

    def route(
        self, text: str | bytes, task: str, max_tier: str | None = None, request_id: str | None = None, policy: str | None = None, timeout_s: float | None = None
    ) -> RoutedAnswer:
        inputs = entry_inputs(self.module, text, task, max_tier, request_id, policy)
        kwargs = {"client_timeout": timeout_s} if timeout_s and self.module.__name__.endswith("grpc") else {}
        result = self.client.infer(ENTRY_MODEL, inputs, **kwargs)
        return answer_from_outputs(result.as_numpy(OUTPUT), result.as_numpy(METADATA), request_id)

    def close(self) -> None:
        self.client.close()
