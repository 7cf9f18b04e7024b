"""The one upstream call: the `routenlp` entry model over tritonclient's asyncio gRPC client."""

from __future__ import annotations

import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from clients.route_client import ENTRY_MODEL, RoutedAnswer, answer_from_outputs, entry_inputs
from gateway.errors import from_triton
from routenlp_core.contract import METADATA, OUTPUT


class Upstream:
    def __init__(self, grpc_url: str, timeout_s: float) -> None:
        self.client = grpcaio.InferenceServerClient(grpc_url)
        self.timeout_s = timeout_s

    async def route(self, text: str, task: str, *, request_id: str, max_tier: str | None = None, policy: str | None = None) -> RoutedAnswer:
        inputs = entry_inputs(grpcaio, text, task, max_tier, request_id, policy)
        try:
            result = await self.client.infer(ENTRY_MODEL, inputs, client_timeout=self.timeout_s)
            # checks both tensors are there and the answer is this request's
            return answer_from_outputs(result.as_numpy(OUTPUT), result.as_numpy(METADATA), request_id)
        except InferenceServerException as err:
            raise from_triton(err.status(), err.message() or str(err)) from None

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_server_ready(client_timeout=2.0))
        except InferenceServerException:
            return False

    async def close(self) -> None:
        await self.client.close()

