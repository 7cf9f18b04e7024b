"""RoutingService: one routing request, end to end, in plain Python (no Triton).

    validate (TEXT, TASK, MAX_TIER, REQUEST_ID) -> router logits -> cheapest servable tier predicted
    to meet the bar -> run_cascade (escalation, fallbacks) -> OUTPUT + METADATA + a log record

Two layers, both testable without a server:

* RoutingService takes text-level callables: `call_router(text, task, model) -> logits` (one per
  tier, in the config's router_tiers order; model: "router" or a router ablation) and `call_tier(tier, task, text) -> TierResult` (raising
  TierUnavailable when the tier cannot answer). All decisions live here and in cascade.py.
* TierCodec turns tensor-level calls (a TensorBackend: router logits, T1 logits, decoder
  generations) into those callables: router/T1 encoding and T1 decoding (routenlp_core.t1_codec),
  the decoder prompt, answer parsing (routenlp_core.answers), uncertainty and billed tokens, exactly as
  the build labelled the tiers. The Triton adapter (triton_models/routenlp_bls.py) only implements
  the TensorBackend with BLS calls and T4Client.

Hooks for the escalation log / monitor: every routed request yields RouteResult.record (a flat
JSON-able dict) and, if given, `sink(record)` is called after each request; a failing sink is
logged and never fails the request. RouteResult.counters() says which metrics to increment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from routenlp_core.answers import Generation
from routenlp_core.cascade import CascadeOutcome, CascadePolicy, Stage, TierResult, TierUnavailable, run_cascade
from routenlp_core.contract import (
    FIXED_THRESHOLD_POLICY,
    FIXED_TIER_POLICIES,
    MAX_TIER,
    NO_CASCADE_POLICY,
    POLICIES,
    POLICY,
    REQUEST_ID,
    ROUTED_POLICY,
    ROUTER_ABLATION_POLICIES,
    ROUTER_MODEL,
    TASK,
    TEXT,
    TIERS,
    RequestError,
)
from routenlp_core.serving_config import DEFAULT_GAMMA, ServingConfig
from routenlp_core.stage_times import activate, span
from routenlp_core.stage_times import current as current_stage_times
from routenlp_core.uncertainty import generation_uncertainty
from routenlp_core.utility import UtilityRule, features

logger = logging.getLogger(__name__)

MAX_REQUEST_ID_CHARS = 128
FIXED_THRESHOLD = 0.3  # u threshold of every (task, tier) under FIXED_THRESHOLD_POLICY


@dataclass(frozen=True)
class RouteRequest:
    text: str
    task: str
    max_tier: str
    request_id: str
    text_bytes: int
    policy: str = ROUTED_POLICY


@dataclass
class RouteResult:
    request: RouteRequest
    output: str  # OUTPUT: JSON for structured tasks, the text for generation tasks
    metadata: dict[str, Any]  # METADATA
    outcome: CascadeOutcome
    record: dict[str, Any] = field(default_factory=dict)  # for the escalation log
    cascade_policy: CascadePolicy | None = None  # the rules this request's cascade ran by

    def metadata_json(self) -> str:
        return json.dumps(self.metadata, sort_keys=True, allow_nan=False)

    def counters(self) -> dict[str, list[tuple[str, str, float]]]:
        """(task, tier, amount) to add to each metric family: requests by answering tier,
        escalations and dollars by stage tier, fallbacks by the tier that was unavailable."""
        task = self.request.task
        stages = self.outcome.stages
        return {
            "requests": [(task, self.outcome.tier, 1.0)],
            "escalations": [(task, s.tier, 1.0) for s in stages if s.u is not None and not s.accepted],
            "fallbacks": [(task, s.tier, 1.0) for s in stages if s.error],
            "dollars": [(task, s.tier, s.cost) for s in stages if s.cost > 0],
        }


# ---------------------------------------------------------------- pure helpers


def _decode(name: str, value: bytes | str | None, required: bool) -> str | None:
    if value is None:
        if required:
            raise RequestError(f"{name} is required")
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RequestError(f"{name} is not valid UTF-8 (byte 0x{value[err.start]:02x} at offset {err.start})") from None
    if isinstance(value, str):
        return value
    raise RequestError(f"{name} must be a string (BYTES), got {type(value).__name__}")


def allowed_tiers(task: str, max_tier: str, config: ServingConfig) -> list[str]:
    """Tiers that serve `task` (T1 only has heads for structured tasks), cheapest first, <= max_tier."""
    servable = TIERS if task in config.structured_tasks else TIERS[1:]
    return [t for t in servable if TIERS.index(t) <= TIERS.index(max_tier)]


def cheapest_confident_tier(probabilities: Mapping[str, float], allowed: Sequence[str], gamma: float) -> str:
    """The cheapest allowed tier whose predicted probability of meeting the bar is >= gamma; when
    none is, the allowed tier most likely to meet it (ties: the cheaper tier)."""
    if not allowed:
        raise ValueError("no allowed tier")
    ordered = sorted(allowed, key=TIERS.index)
    for tier in ordered:
        if probabilities[tier] >= gamma:
            return tier
    return max(ordered, key=lambda t: (probabilities[t], -TIERS.index(t)))


def router_probabilities(logits: Sequence[float], router_tiers: Sequence[str]) -> dict[str, float]:
    """Per tier, the router's probability that its answer meets the bar (one sigmoid per tier)."""
    if len(logits) != len(router_tiers):
        raise ValueError(f"router returned {len(logits)} logits for {len(router_tiers)} tiers")
    values = np.asarray(logits, dtype=np.float64)
    return {tier: float(p) for tier, p in zip(router_tiers, 1.0 / (1.0 + np.exp(-values)))}


@dataclass(frozen=True)
class RouteDecision:
    start: str  # the tier the cascade starts at
    policy: CascadePolicy  # the cascade rules for this one request
    chosen: str | None = None  # the utility's pick (None: no utility rule, or the router was down)


def decide_route(
    task: str,
    probabilities: Mapping[str, float] | None,
    allowed: Sequence[str],
    base: CascadePolicy,
    rule: UtilityRule | None,
    t1_u: float | None = None,
) -> RouteDecision:
    """Where one request starts and how its cascade runs (plain Python: the BLS and the offline
    replays of calibration, bench curves and coopt call this same rule).

    - router down (probabilities None): the cheapest allowed tier, the calibrated cascade above it;
    - no utility rule (before calibration): the cheapest tier the router predicts to pass at
      DEFAULT_GAMMA;
    - else the utility's pick among `allowed` (routenlp_core.utility), fed T1's uncertainty `t1_u`
      when T1 already answered (structured tasks: T1 answers first); then at most one escalation,
      to the pick's calibrated target when its u exceeds delta (the target is final). T1's answer
      is kept only when the pick is T1; otherwise the request continues at the pick.
    """
    if probabilities is None:
        return RouteDecision(allowed[0], base)
    if rule is None:
        return RouteDecision(cheapest_confident_tier(probabilities, allowed, DEFAULT_GAMMA), base)
    chosen = rule.choose(task, features(probabilities, t1_u), allowed)
    target = base.escalate_to.get(task, {}).get(chosen)
    chain: dict[str, str | None] = {chosen: target}
    if target is not None:
        chain[target] = None
    thresholds = base.thresholds
    start = chosen
    if t1_u is not None and chosen != "t1":  # T1 answered, the utility prefers a pricier tier
        chain["t1"], start = chosen, "t1"
        thresholds = {**thresholds, task: {**thresholds.get(task, {}), "t1": -math.inf}}
    return RouteDecision(start, replace(base, thresholds=thresholds, escalate_to={**base.escalate_to, task: chain}), chosen)


def format_output(task: str, prediction: Any, text: str) -> str:
    """OUTPUT: {"label": ...} (classification), {"entities": [...], "tags": [...]} (NER, one tag per
    whitespace-separated word of TEXT; entity start/end are word indices, end exclusive), else text."""
    from routenlp_core.answers import ner_entities
    from routenlp_core.tasks import get_task

    kind = get_task(task).kind
    if kind == "classification":
        return json.dumps({"label": str(prediction)})
    if kind == "ner":
        words = text.split()
        tags = [str(t) for t in prediction]
        entities = [
            {"type": kind_, "text": " ".join(words[start:end]), "start": start, "end": end}
            for kind_, start, end in ner_entities(words, tags)
        ]
        return json.dumps({"entities": entities, "tags": tags})
    return str(prediction)


# ---------------------------------------------------------------- the service


class RoutingService:
    def __init__(
        self,
        config: ServingConfig,
        call_router: Callable[[str, str, str], Sequence[float]],
        call_tier: Callable[[str, str, str], TierResult],
        *,
        sink: Callable[[dict[str, Any]], None] | None = None,
        bls_version: str | int | None = None,
        code: str | None = None,  # fingerprint of the serving code this version runs (bls_router/version_code.py)
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
        overlap: Executor | None = None,
    ) -> None:
        self.config = config
        # runs the T1 call while the router call is under way, where T1 answers first whatever the
        # router says (see t1_first); None: one call after the other
        self.overlap = overlap
        conformal = config.policy()
        every = {task: {tier: FIXED_THRESHOLD for tier in TIERS[:-1]} for task in config.tasks}
        self.utility = config.utility()
        self.cascade_policies = {
            ROUTED_POLICY: conformal,
            NO_CASCADE_POLICY: replace(conformal, thresholds={}),  # no threshold: accept
            FIXED_THRESHOLD_POLICY: replace(conformal, thresholds=every),
        }
        self.call_router = call_router
        self.call_tier = call_tier
        self.sink = sink
        self.bls_version = None if bls_version is None else str(bls_version)
        self.code = code
        self.clock = clock
        self.wall_clock = wall_clock

    # ---- validation ---------------------------------------------------------------------------

    def parse(
        self,
        text: bytes | str | None,
        task: bytes | str | None,
        max_tier: bytes | str | None = None,
        request_id: bytes | str | None = None,
        policy: bytes | str | None = None,
    ) -> RouteRequest:
        """Validate one request's inputs (raw BYTES or str); raises RequestError with the reason."""
        limit = self.config.max_text_bytes
        if isinstance(text, str):
            size = len(text.encode("utf-8", errors="surrogatepass"))
        elif isinstance(text, bytes):
            size = len(text)
        else:
            size = 0
        if size > limit:  # checked before decoding: an oversized body is refused without work
            raise RequestError(f"TEXT is {size} bytes; the limit is {limit} bytes (serving config max_text_bytes)")
        text_str = _decode(TEXT, text, required=True)
        if not text_str.strip():
            raise RequestError("TEXT is empty")
        task_str = (_decode(TASK, task, required=True) or "").strip()
        if not task_str:
            raise RequestError(f"TASK is empty; valid tasks: {', '.join(self.config.tasks)}")
        if task_str not in self.config.tasks:
            raise RequestError(f"unknown TASK {task_str!r}; valid tasks: {', '.join(self.config.tasks)}")
        tier = (_decode(MAX_TIER, max_tier, required=False) or "").strip().lower() or TIERS[-1]
        if tier not in TIERS:
            raise RequestError(f"MAX_TIER must be one of {', '.join(TIERS)}; got {tier!r}")
        if not allowed_tiers(task_str, tier, self.config):
            raise RequestError(f"MAX_TIER {tier} leaves no tier for {task_str}: generation tasks are served by t2-t4")
        rid = (_decode(REQUEST_ID, request_id, required=False) or "").strip()
        if len(rid) > MAX_REQUEST_ID_CHARS or not rid.isprintable():
            raise RequestError(f"REQUEST_ID must be at most {MAX_REQUEST_ID_CHARS} printable characters")
        policy_str = (_decode(POLICY, policy, required=False) or "").strip().lower() or ROUTED_POLICY
        if policy_str not in POLICIES:
            raise RequestError(f"POLICY must be one of {', '.join(POLICIES)}; got {policy_str!r}")
        ablation_router = ROUTER_ABLATION_POLICIES.get(policy_str)
        if ablation_router is not None and ablation_router not in self.config.router_models:
            raise RequestError(f"POLICY {policy_str} needs the {ablation_router} model, which repository version {self.config.repository_version} does not have")
        fixed = FIXED_TIER_POLICIES.get(policy_str)
        if fixed is not None:
            if fixed not in allowed_tiers(task_str, TIERS[-1], self.config):
                raise RequestError(f"POLICY {policy_str}: {fixed} does not serve {task_str} (generation tasks are served by t2-t4)")
            if TIERS.index(fixed) > TIERS.index(tier):
                raise RequestError(f"POLICY {policy_str} is above MAX_TIER {tier}")
            tier = fixed  # a fixed tier never escalates past itself
        return RouteRequest(text_str, task_str, tier, rid or uuid.uuid4().hex, size, policy_str)

    # ---- routing ------------------------------------------------------------------------------

    def route(self, request: RouteRequest) -> RouteResult:
        """Router pick, then the cascade. Raises TierUnavailable only if no tier could answer."""
        started = self.clock()
        started_ns = time.perf_counter_ns()
        allowed = allowed_tiers(request.task, request.max_tier, self.config)
        notes: list[str] = []
        router_info: dict[str, Any] = {}
        fixed = FIXED_TIER_POLICIES.get(request.policy)
        base = self.cascade_policy_for(request)
        t1_early = self._t1_early(request, allowed) if fixed is None else None
        t1_answer: TierResult | None = None
        t1_error: TierUnavailable | None = None
        if fixed is not None:
            decision, router_info = RouteDecision(fixed, base), {"tier": None, "skipped": f"policy {request.policy}"}
        else:
            try:
                logits = self.call_router(request.text, request.task, ROUTER_ABLATION_POLICIES.get(request.policy, ROUTER_MODEL))
                p = router_probabilities(logits, self.config.router_tiers)
            except (TierUnavailable, ValueError) as err:
                p = None
                router_info = {"tier": None, "error": str(err)}
            choice = allowed
            if p is not None and self.utility is not None and self.t1_first(request, allowed):
                # T1 answers first: its confidence is a feature of the choice
                try:
                    t1_answer = t1_early.result() if t1_early is not None else self.call_tier("t1", request.task, request.text)
                except TierUnavailable as err:
                    t1_error = err
                    choice = [t for t in allowed if t != "t1"] or allowed
            decision = decide_route(request.task, p, choice, base, self.utility, None if t1_answer is None else t1_answer.u)
            if p is None:
                notes.append(f"router unavailable: started at {decision.start}")
            else:
                router_info = {"tier": decision.chosen or decision.start, "p": {t: round(v, 4) for t, v in p.items()},
                               **({"gamma": DEFAULT_GAMMA} if self.utility is None else {"lambda": _finite(self.utility.lam)})}
        router_ms = (self.clock() - started) * 1e3

        def call_tier(tier: str) -> TierResult:
            if tier == "t1":  # T1 may have answered (or failed) already, or be under way
                if t1_error is not None:
                    raise t1_error
                if t1_answer is not None:
                    return t1_answer
                if t1_early is not None:
                    return t1_early.result()
            return self.call_tier(tier, request.task, request.text)

        outcome = run_cascade(
            request.task,
            decision.start,
            call_tier,
            decision.policy,
            max_tier=request.max_tier,
            clock=self.clock,
        )
        start = decision.start
        if t1_error is not None and not any(stage.tier == "t1" for stage in outcome.stages):
            outcome.stages.insert(0, Stage("t1", error=str(t1_error)))  # counted as a fallback
            notes.append(f"t1 unavailable: started at {start}")
        if outcome.fallback:
            notes.append(outcome.fallback)
        total_ms = (self.clock() - started) * 1e3
        with span("metadata"):
            output = format_output(request.task, outcome.output, request.text)
            metadata = self._metadata(request, outcome, start, router_info, router_ms, total_ms, notes)
            result = RouteResult(request, output, metadata, outcome, cascade_policy=decision.policy)
            result.record = self._record(result)
        with span("log"):
            self._emit(result.record)
        times = current_stage_times()
        # the rest of route(): router probabilities, the decision, the cascade, T1's answer decoding
        inside = sum(times.ns.get(stage, 0) for stage in ("tokenize", "router", "t1", "metadata", "log"))
        times.add("cascade", max(0, time.perf_counter_ns() - started_ns - inside))
        return result

    def t1_first(self, request: RouteRequest, allowed: Sequence[str]) -> bool:
        """Whether T1 answers first whatever the router says: T1 is the only tier allowed, or the task
        is cascade-first (calibration: the structured tasks) with T1 allowed (decide_route)."""
        return allowed[0] == "t1" and (len(allowed) == 1 or request.task in self.config.cascade_first)

    def _t1_early(self, request: RouteRequest, allowed: Sequence[str]) -> Future | None:
        """The T1 call, started on the overlap executor beside the router call when t1_first.
        The stage's latency_ms is then the wait for it after the router call, not its whole call."""
        if self.overlap is None or not self.t1_first(request, allowed):
            return None
        times = current_stage_times()

        def call() -> TierResult:
            activate(times)  # its spans count for this request
            try:
                return self.call_tier("t1", request.task, request.text)
            finally:
                activate(None)

        return self.overlap.submit(call)

    def cascade_policy_for(self, request: RouteRequest) -> CascadePolicy:
        """The thresholds the request's POLICY escalates by (fixed-tier policies never escalate
        past their tier, so the conformal ones serve them)."""
        return self.cascade_policies.get(request.policy, self.cascade_policies[ROUTED_POLICY])

    def handle(self, text, task, max_tier=None, request_id=None, policy=None) -> RouteResult:
        return self.route(self.parse(text, task, max_tier, request_id, policy))

    def _metadata(self, request, outcome, start, router_info, router_ms, total_ms, notes) -> dict[str, Any]:
        meta = outcome.metadata()
        stage_ms = sum(s.latency_ms for s in outcome.stages)
        sla = self.config.latency_sla_ms.get(request.task)
        meta.update(
            request_id=request.request_id,
            task=request.task,
            policy=request.policy,
            start_tier=start,
            max_tier=request.max_tier,
            router=router_info,
            latency_ms={"router": round(router_ms, 3), **meta["latency_ms"]},
            total_ms=round(total_ms, 3),
            # what routing itself cost: everything but the tier calls (router call included)
            overhead_ms=round(max(0.0, total_ms - stage_ms), 3),
            fallback="; ".join(notes) if notes else None,
            sla_ms=sla,
            sla_met=None if sla is None else total_ms <= sla,
            repository_version=self.config.repository_version,
            bls_version=self.bls_version,
            code=self.code,
        )
        meta["u"] = {tier: round(u, 6) for tier, u in meta["u"].items()}
        return meta

    def _record(self, result: RouteResult) -> dict[str, Any]:
        """One flat line for the durable escalation log (monitor, coopt's failure clustering)."""
        meta = result.metadata
        return {
            "ts": round(self.wall_clock(), 3),
            **{k: meta[k] for k in ("request_id", "task", "policy", "tier", "start_tier", "max_tier", "path", "u", "escalations", "fallback", "errors", "cost_usd", "latency_ms", "total_ms", "repository_version", "bls_version")},
            "thresholds": {tier: _finite((result.cascade_policy or self.cascade_policy_for(result.request)).delta(result.request.task, tier)) for tier in meta["path"]},
            "text_bytes": result.request.text_bytes,
            "text_sha256": hashlib.sha256(result.request.text.encode("utf-8", errors="surrogatepass")).hexdigest()[:16],
            # coopt distils the frontier tier's answers on escalated inputs, so the log keeps them
            "text": result.request.text,
            "output": result.output,
        }

    def _emit(self, record: dict[str, Any]) -> None:
        if self.sink is None:
            return
        try:
            self.sink(record)
        except Exception:  # the log must never fail a request
            logger.exception("routing record sink failed for request %s", record.get("request_id"))


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


# ---------------------------------------------------------------- tensors <-> text


class TensorBackend(Protocol):
    def router_logits(self, inputs: Mapping[str, np.ndarray], model: str) -> np.ndarray: ...  # [1, tiers]

    def t1_logits(self, task: str, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...

    def generate(self, tier: str, prompt: str, max_tokens: int) -> Generation: ...  # t2, t3, t4


class TierCodec:
    """call_router / call_tier for RoutingService over a TensorBackend and the shared tokenizer.

    Any failure inside a tier call (the backend raising, or an answer that cannot be decoded)
    becomes TierUnavailable naming the tier, so the cascade falls back instead of failing."""

    def __init__(self, config: ServingConfig, tokenizer, backend: TensorBackend) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.backend = backend
        from routenlp_core.t1_codec import TokenIds

        self.token_ids = TokenIds(tokenizer)  # one encoding per request text, shared by its calls

    def router(self, text: str, task: str, model: str = ROUTER_MODEL) -> list[float]:
        with span("tokenize"):
            input_ids, attention = self.token_ids.batch(self.token_ids(text), self.config.router_max_len)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "task_id": np.array([[self.config.task_ids[task]]], dtype=np.int64),
        }
        try:
            with span("router"):
                logits = self.backend.router_logits(inputs, model)
            logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        except TierUnavailable:
            raise
        except Exception as err:
            raise TierUnavailable(f"{model}: {type(err).__name__}: {err}") from None
        if logits.size != len(self.config.router_tiers) or not np.all(np.isfinite(logits)):
            raise TierUnavailable(f"{model}: expected {len(self.config.router_tiers)} finite logits, got {logits.tolist()}")
        return logits.tolist()

    def tier(self, tier: str, task: str, text: str) -> TierResult:
        try:
            return self._t1(task, text) if tier == "t1" else self._decoder(tier, task, text)
        except TierUnavailable:
            raise
        except Exception as err:
            raise TierUnavailable(f"{tier}: {type(err).__name__}: {err}") from None

    def _t1(self, task: str, text: str) -> TierResult:
        from routenlp_core.t1_codec import predict_with

        head = self.config.t1[task]

        def logits_fn(ids, mask):
            with span("t1"):
                return self.backend.t1_logits(task, ids, mask)

        record = {"task": task, "text": text}
        (prediction, u), = predict_with(
            logits_fn, self.tokenizer, task, head.labels, [record], head.max_len, token_ids=self.token_ids
        )
        # billed as the build labelled T1: the text's tokens, cut at the head's input length
        with span("tokenize"):
            tokens = min(len(self.token_ids(text)), head.max_len)
        return TierResult(output=prediction, u=float(u), tokens=tokens)

    def _decoder(self, tier: str, task: str, text: str) -> TierResult:
        from routenlp_core.answers import parse_output, prompt_text

        prompt = prompt_text({"task": task, "text": text})
        if tier == "t4":
            prompt = self.fit_prompt(prompt)
        generation = self.backend.generate(tier, prompt, self.config.max_answer_tokens)
        prediction = parse_output(task, generation.text, {"task": task, "text": text, "tokens": text.split()})
        return TierResult(
            output=prediction,
            u=generation_uncertainty(list(generation.token_logprobs)),
            tokens=int(generation.prompt_tokens) + int(generation.completion_tokens),
        )

    def fit_prompt(self, prompt: str) -> str:
        """The prompt cut to max_input_tokens from the left (keeping <s> and the 'answer:' cue), as
        the T2/T3 engines and the labelling do; only T4 needs it here (an HTTP API gets text)."""
        from bls_router.vllm_requests import fit_prompt_ids

        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        budget = self.config.max_input_tokens + self.config.max_answer_tokens
        fitted = fit_prompt_ids(ids, max_tokens=self.config.max_answer_tokens, max_model_len=budget, bos_id=self.tokenizer.bos_token_id)
        if len(fitted) == len(ids):
            return prompt
        return self.tokenizer.decode(fitted, skip_special_tokens=True)


def token_logprobs_from_vllm_json(logprobs_json: str | bytes) -> list[float]:
    """Chosen-token logprobs from vllm_backend's `logprobs` output (stock NGC backend), for greedy
    decoding: per step {token_id: {"logprob", "rank", ...}}, the chosen token is the rank-1 one."""
    steps = json.loads(logprobs_json) or []
    chosen = []
    for step in steps:
        if not step:
            continue
        entries = list(step.values())
        ranked = [e for e in entries if e.get("rank") == 1]
        best = ranked[0] if ranked else max(entries, key=lambda e: e["logprob"])
        chosen.append(min(0.0, float(best["logprob"])))
    return chosen
