"""The gateway's HTTP routes (FastAPI): OpenAI's /v1 API over the `routenlp` entry model, plus
/health, /health/ready, /health/tiers and /metrics.

One request: key -> tenant (401) -> body (400) -> model -> task (404) -> the ledger reserves the
request's maximum cost (429 with the budget headers once the cap is reached) -> one gRPC call to
`routenlp` (its errors mapped by gateway.errors) -> the real cost is charged, the hold freed ->
the answer in OpenAI's shape, the routing metadata in `routenlp` and the X-RouteNLP-* headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from gateway.errors import GatewayError, bad_request
from gateway.health import HealthBoard
from gateway.ledger import BudgetLedger
from gateway.metrics import UNKNOWN_TENANT, GatewayMetrics
from gateway.openai_schema import (
    GENERIC_MODEL,
    MODEL_PREFIX,
    ChatRequest,
    CompletionRequest,
    Kind,
    RoutingFields,
    completion_body,
    model_card,
    model_list,
    stream_chunks,
    usage,
)
from gateway.pricing import max_cost
from gateway.probes import Prober, probe_interval, tier_models
from gateway.tenants import AuthError, Tenant, TenantSource
from gateway.upstream import Upstream
from routenlp_core.serving_config import ENV_T4_BASE_URL, TOKENIZER_DIR, ServingConfig

logger = logging.getLogger(__name__)
LEDGER_FILE = "gateway_ledger.sqlite"  # in the state folder
HEADER_TASK, HEADER_MAX_TIER, HEADER_POLICY, HEADER_REQUEST_ID = "x-routenlp-task", "x-routenlp-max-tier", "x-routenlp-policy", "x-request-id"
HEALTH_TIERS = ("router", "t1", "t2", "t3", "t4")
PERIOD_WORDS = {"day": "daily", "month": "monthly"}
HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")  # printable ASCII stays as is


@dataclass
class GatewaySettings:
    config: ServingConfig  # the entry model's serving config (tasks, prices, limits, T4)
    version_dir: Path  # its version folder (the shared tokenizer, for usage counts)
    grpc_url: str
    metrics_url: str
    state_dir: Path
    timeout_s: float = 120.0

    def t4_base_url(self) -> str:
        return os.environ.get(ENV_T4_BASE_URL, "").strip() or self.config.t4.base_url


def _load_tokenizer(version_dir: Path):
    from tokenizers import Tokenizer

    path = version_dir / TOKENIZER_DIR / "tokenizer.json"
    return Tokenizer.from_file(str(path)) if path.exists() else None


class Gateway:
    """What the routes share: the upstream client, tenants, ledger, health board and metrics."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.config = settings.config
        self.tenants = TenantSource(settings.state_dir)
        self.ledger = BudgetLedger(settings.state_dir / LEDGER_FILE, reservation_ttl_s=max(600.0, 2 * settings.timeout_s))
        t4 = self.config.t4.with_env_overrides()
        self.board = HealthBoard(HEALTH_TIERS, t4.breaker_failures, t4.breaker_reset_s)
        self.metrics = GatewayMetrics()
        self.tokenizer = _load_tokenizer(settings.version_dir)
        self.upstream: Upstream | None = None
        self.prober: Prober | None = None

    async def start(self) -> None:
        self.upstream = Upstream(self.settings.grpc_url, self.settings.timeout_s)
        self.http = httpx.AsyncClient()
        t4 = self.config.t4.with_env_overrides()
        self.prober = Prober(
            self.board, self.upstream.client, self.http, tier_models(self.config), self.settings.metrics_url,
            t4_base_url=self.settings.t4_base_url(), t4_key_env=t4.api_key_env, t4_model=t4.model, interval_s=probe_interval(t4.breaker_reset_s),
        )  # fmt: skip
        self._probe_task = asyncio.create_task(self.prober.run())

    async def stop(self) -> None:
        self._probe_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._probe_task
        await self.http.aclose()
        await self.upstream.close()
        self.ledger.close()

    # ---- one request --------------------------------------------------------------------------

    def _answer_tokens(self, output: str) -> int:
        return len(self.tokenizer.encode(output, add_special_tokens=False).ids) if self.tokenizer else 0

    def authenticate(self, credentials: HTTPAuthorizationCredentials | None) -> Tenant:
        try:
            return self.tenants.table().authenticate(credentials.credentials if credentials else None)
        except AuthError as err:
            self.metrics.refusals.labels(UNKNOWN_TENANT, "auth").inc()
            raise GatewayError(401, str(err), "invalid_request_error", code="invalid_api_key") from None

    def task_of(self, body: RoutingFields, request: Request) -> str:
        tasks = self.config.tasks
        if body.model.startswith(MODEL_PREFIX) and body.model.removeprefix(MODEL_PREFIX) in tasks:
            return body.model.removeprefix(MODEL_PREFIX)
        if body.model == GENERIC_MODEL:
            task = (body.task or request.headers.get(HEADER_TASK) or "").strip()
            if not task:
                raise bad_request(f"model {GENERIC_MODEL!r} needs the task in `task` or the X-RouteNLP-Task header; valid tasks: {', '.join(tasks)}", "task")
            return task  # an unknown one gets the BLS's "unknown TASK" message
        models = ", ".join([MODEL_PREFIX + t for t in tasks] + [GENERIC_MODEL])
        raise GatewayError(404, f"The model {body.model!r} does not exist; models: {models}", "invalid_request_error", code="model_not_found", param="model")

    async def complete(self, kind: Kind, body: ChatRequest | CompletionRequest, request: Request, tenant: Tenant) -> Response:
        text = body.text()
        task = self.task_of(body, request)
        headers = request.headers
        max_tier = body.max_tier or headers.get(HEADER_MAX_TIER)
        policy = body.policy or headers.get(HEADER_POLICY)
        request_id = (body.request_id or headers.get(HEADER_REQUEST_ID) or uuid.uuid4().hex).strip()
        admission = self.ledger.reserve(tenant.name, tenant.caps(), max_cost(self.config, task, max_tier, policy))
        if not admission.admitted:
            budget = admission.budget
            self.metrics.refusals.labels(tenant.name, "budget").inc()
            self.metrics.remaining.labels(tenant.name, budget.period).set(budget.remaining_usd)
            retry = {"retry-after": str(max(1, math.ceil(budget.resets_at - time.time())))}
            message = (
                f"tenant {tenant.name!r} has no {PERIOD_WORDS[budget.period]} budget left (cap ${budget.cap_usd:g}, spent or held by "
                f"its requests in flight); it resets at {budget.headers()['x-routenlp-budget-reset']}"
            )  # fmt: skip
            raise GatewayError(429, message, "insufficient_quota", code="budget_exceeded", headers={**budget.headers(), **retry})
        try:
            answer = await self.upstream.route(text, task, request_id=request_id, max_tier=max_tier, policy=policy)
        except BaseException:
            self.ledger.release(admission.reservation)  # nothing was answered, nothing is charged
            raise
        meta = answer.metadata
        budget = self.ledger.settle(admission.reservation, meta["cost_usd"], request_id, tenant.caps())
        self.metrics.spend.labels(tenant.name).inc(meta["cost_usd"])
        self.board.observe_answer(meta)
        self.metrics.remaining.labels(tenant.name, budget.period).set(budget.remaining_usd)
        out_headers = {**routing_headers(meta), **budget.headers()}
        counted = usage(meta, self._answer_tokens(answer.output) if meta["tier"] != "t1" else 0)
        if body.stream:
            chunks = stream_chunks(kind, body.model, answer.output, meta, counted, body.include_usage)
            return EventSourceResponse(_sse(chunks), headers=out_headers)
        return JSONResponse(completion_body(kind, body.model, answer.output, meta, counted), headers=out_headers)


def routing_headers(meta: dict[str, Any]) -> dict[str, str]:
    return {
        "x-request-id": quote(str(meta["request_id"]), safe=HEADER_SAFE),  # any printable id, as header-safe ASCII
        "x-routenlp-tier": str(meta["tier"]),
        "x-routenlp-path": ">".join(meta["path"]),
        "x-routenlp-cost-usd": f"{meta['cost_usd']:.8f}",
        "x-routenlp-escalations": str(meta["escalations"]),
        "x-routenlp-fallback": "1" if meta.get("fallback") else "0",
    }


async def _sse(chunks: list[dict[str, Any]]):
    for chunk in chunks:
        yield {"data": json.dumps(chunk)}
    yield {"data": "[DONE]"}


def _validation_message(err: RequestValidationError) -> str:
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "body"
    return f"invalid request body at {where}: {first.get('msg', 'invalid')}"


bearer = HTTPBearer(auto_error=False)


def create_app(settings: GatewaySettings) -> FastAPI:
    gateway = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="RouteNLP OpenAI-compatible gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, err: GatewayError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        return bad_request(_validation_message(err)).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        return GatewayError(err.status_code, str(err.detail), "invalid_request_error").response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception):
        logger.exception("gateway error")
        return GatewayError(500, f"internal error: {type(err).__name__}", "api_error").response()

    async def tenant(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Tenant:
        # async: FastAPI runs a sync dependency in a worker thread, a thread hop per request
        return gateway.authenticate(credentials)

    async def counted(endpoint: str, tenant_: Tenant, run) -> Response:
        try:
            response = await run()
        except GatewayError as err:
            gateway.metrics.requests.labels(tenant_.name, endpoint, str(err.status)).inc()
            raise
        gateway.metrics.requests.labels(tenant_.name, endpoint, str(response.status_code)).inc()
        return response

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request, tenant_: Tenant = Depends(tenant)):
        return await counted("chat", tenant_, lambda: gateway.complete("chat", body, request, tenant_))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, tenant_: Tenant = Depends(tenant)):
        return await counted("completions", tenant_, lambda: gateway.complete("completion", body, request, tenant_))

    @app.get("/v1/models")
    async def models(tenant_: Tenant = Depends(tenant)):
        return model_list(gateway.config.tasks)

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str, tenant_: Tenant = Depends(tenant)):
        if model_id not in {card["id"] for card in model_list(gateway.config.tasks)["data"]}:
            raise GatewayError(404, f"The model {model_id!r} does not exist", "invalid_request_error", code="model_not_found", param="model")
        return model_card(model_id)

    @app.get("/health")
    async def live():
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready():
        ok = await gateway.upstream.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/health/tiers")
    async def tiers():
        snapshot = gateway.board.snapshot()
        gateway.metrics.set_tiers(snapshot)
        return snapshot

    @app.get("/metrics")
    async def metrics():
        gateway.metrics.set_tiers(gateway.board.snapshot())
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
