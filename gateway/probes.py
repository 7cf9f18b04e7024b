"""The health probes behind gateway.health: Triton model readiness, the T4 endpoint, Triton's
/metrics. One cycle runs every probe concurrently; the loop repeats it every `interval_s`."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import httpx
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from gateway.health import HealthBoard
from routenlp_core.serving_config import ServingConfig

logger = logging.getLogger(__name__)
VERSIONS_EVERY = 10  # cycles between model-metadata reads (versions change only on a swap)
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.5, 5.0


def probe_interval(reset_s: float) -> float:
    """A third of the breaker's cool-down (bounded): an outage shows well within one period."""
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, reset_s / 3.0))


def tier_models(config: ServingConfig) -> dict[str, list[str]]:
    """The Triton models each tier runs on (T4 is an HTTP endpoint, probed separately)."""
    return {"router": ["router"], "t1": [f"t1_{task}" for task in config.structured_tasks], "t2": ["t2"], "t3": ["t3"]}


class Prober:
    def __init__(
        self,
        board: HealthBoard,
        client: grpcaio.InferenceServerClient,
        http: httpx.AsyncClient,
        models: Mapping[str, Sequence[str]],
        metrics_url: str,
        t4_base_url: str = "",
        t4_key_env: str = "",
        t4_model: str = "",
        interval_s: float = 5.0,
    ) -> None:
        self.board, self.client, self.http = board, client, http
        self.models = dict(models)
        self.metrics_url = metrics_url
        self.t4_base_url = t4_base_url.rstrip("/")
        self.t4_key_env = t4_key_env
        self.interval_s = interval_s
        self.cycles = 0
        if "t4" in board.tiers:
            endpoint = urlsplit(self.t4_base_url).netloc if self.t4_base_url else None
            board.tiers["t4"].version = {"model": t4_model, "endpoint": endpoint}

    async def _model_ready(self, name: str) -> bool:
        try:
            return bool(await self.client.is_model_ready(name, client_timeout=2.0))
        except InferenceServerException:
            return False

    async def _versions(self, name: str) -> list[str] | None:
        try:
            metadata = await self.client.get_model_metadata(name, as_json=True, client_timeout=2.0)
        except InferenceServerException:
            return None
        return list(metadata.get("versions", []))

    async def _triton_tier(self, tier: str, names: Sequence[str]) -> None:
        ready = await asyncio.gather(*(self._model_ready(name) for name in names))
        down = [name for name, ok in zip(names, ready) if not ok]
        self.board.tiers[tier].record(not down, f"not ready in Triton: {', '.join(down)}", probe=True)
        if self.cycles % VERSIONS_EVERY == 0:
            versions = await asyncio.gather(*(self._versions(name) for name in names))
            self.board.tiers[tier].version = {name: found for name, found in zip(names, versions)}

    async def _t4(self) -> None:
        if not self.t4_base_url:
            return
        key = os.environ.get(self.t4_key_env, "") if self.t4_key_env else ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = await self.http.get(f"{self.t4_base_url}/models", headers=headers, timeout=min(2.0, self.interval_s))
            ok, error = response.status_code == 200, f"GET /models answered HTTP {response.status_code}"
        except httpx.HTTPError as err:  # the message names the failure, never the headers
            ok, error = False, f"GET /models failed: {type(err).__name__}"
        self.board.tiers["t4"].record(ok, error, probe=True)

    async def _metrics(self) -> None:
        try:
            response = await self.http.get(self.metrics_url, timeout=2.0)
            if response.status_code == 200:
                self.board.traffic.add(response.text)
        except httpx.HTTPError:
            pass  # Triton down shows in the readiness probes

    async def run_once(self) -> None:
        probes = [self._triton_tier(tier, names) for tier, names in self.models.items() if tier in self.board.tiers]
        if "t4" in self.board.tiers:
            probes.append(self._t4())
        await asyncio.gather(*probes, self._metrics())
        self.cycles += 1

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a probe bug must not end health reporting
                logger.exception("health probe cycle failed")
            await asyncio.sleep(self.interval_s)
