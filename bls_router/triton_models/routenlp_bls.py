"""Triton python-backend model `routenlp`: the routing BLS (thin adapter over bls_router.service).

Inputs (one request = one text, shape [1, 1] with the batch dimension):
  TEXT BYTES, TASK BYTES, optional MAX_TIER BYTES ("t1".."t4"), optional REQUEST_ID BYTES,
  optional POLICY BYTES ("routenlp" default; "always-t1".."always-t4": fixed-tier baselines;
  "routenlp-no-cascade", "routenlp-fixed-threshold": the cascade ablations;
  "routenlp-router-no-cost", "routenlp-router-no-quality": the router ablations)
Outputs: OUTPUT BYTES (JSON {"label"} / {"entities", "tags"} for structured tasks, the text for
generation tasks) and METADATA BYTES (JSON: tier, path, u, cost, latencies, fallback, versions).

The version folder holds serving_config.json (bls_router/serving_config.py) and the shared
tokenizer. Tier calls are BLS requests to `router`, `t1_<task>`, `t2`, `t3` and HTTP calls to T4
(T4Client; base URL from ROUTENLP_T4_BASE_URL or the config, key from the env variable the config
names). A failed tier call raises TierUnavailable so the cascade falls back; errors per request:
RequestError -> INVALID_ARG, no tier left -> UNAVAILABLE, a bug -> INTERNAL (the batch keeps serving).

execute() only validates each request's inputs (a client mistake is answered there, INVALID_ARG)
and hands the request to a pool of routing threads (bls_router/deferred.py), which answer it
through its response sender: the model stays non-decoupled for clients, and execute() never runs
long enough for Triton 2.51's stub health check to break the shared-memory protocol (the server
crash described in the README). Config parameters: `workers` (routing threads per instance) and
`max_pending` (requests accepted at once per instance; beyond it, UNAVAILABLE "overloaded").
A BLS call to a tier waits at most tier_timeout_s (a tier whose stub died never answers).

Every routed request is appended to the durable escalation log (bls_router/escalation_log.py;
path from ROUTENLP_ESCALATION_LOG) before its response is sent, and fed to the escalation-rate
monitor (bls_router/escalation_monitor.py), whose alerts are logged and exported as gauges.

Custom metrics (Triton /metrics, created once in initialize): routenlp_requests_total,
routenlp_escalations_total, routenlp_fallbacks_total, routenlp_cost_dollars_total (labels task,
tier), routenlp_request_failures_total (label code), routenlp_log_failures_total, the
routenlp_latency_ms histogram (task) and the gauges routenlp_escalation_rate,
routenlp_escalation_alert (task; 1 while the rate is >10% above its calibration baseline), and
routenlp_requests_in_flight (accepted by this instance, not yet answered).
Every series also carries `version` and `instance` (sum them away in queries): two instances, or
two versions during a hot swap, must never share one series. Triton 2.51 counts references per
MetricFamily object, i.e. per owner, so when one owner deletes its metrics (finalize, at unload)
the shared series is removed under the other: its counts vanish from /metrics and its next update
touches freed memory (measured: a tritonserver SIGSEGV right after a hot swap of this model).
"""

import os
import sys

# This version's own serving code (code/, bls_router/version_code.py) comes first on the path: a
# rolled-back version runs the code it was written with, not the checkout's.
_CODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "code")
if os.path.isdir(_CODE):
    sys.path.insert(0, _CODE)

# The embedded interpreter starts in the C locale; torch (pulled in through transformers by
# export.encoder) then fails reading its UTF-8 templates. Must run before those imports.
import locale  # noqa: E402

locale.setlocale(locale.LC_CTYPE, "C.UTF-8")

import json  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from bls_router.cascade import TIERS, TierUnavailable  # noqa: E402
from bls_router.deferred import WorkerPool, call_with_deadline  # noqa: E402
from bls_router.escalation_log import EscalationLog, keep_text_from_env, log_path  # noqa: E402
from bls_router.escalation_monitor import EscalationMonitor  # noqa: E402
from bls_router.serving_config import (  # noqa: E402
    BLS_MAX_PENDING_DEFAULT,
    BLS_MAX_PENDING_PARAMETER,
    BLS_WORKERS_DEFAULT,
    BLS_WORKERS_PARAMETER,
    TOKENIZER_DIR,
    ServingConfigError,
    load_serving_config,
)
from bls_router.service import (  # noqa: E402
    ROUTED_POLICY,
    Generation,
    RequestError,
    RoutingService,
    TierCodec,
    token_logprobs_from_vllm_json,
)
from bls_router.version_code import version_code  # noqa: E402

INPUTS = ("TEXT", "TASK", "MAX_TIER", "REQUEST_ID", "POLICY")
DRAIN_TIMEOUT_S = 120.0
LATENCY_BUCKETS_MS = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0]


def _scalar(request, name):
    """The one element of an optional input as bytes/str, or None; a batch is a client error."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy()
    if array.size != 1:
        raise RequestError(
            f"{name} must hold exactly one element per request (shape [1, 1]), got shape {list(array.shape)}; "
            "send one text per request, Triton batches requests itself"
        )
    value = array.reshape(-1)[0]
    if isinstance(value, (bytes, str)):
        return value
    raise RequestError(f"{name} must be BYTES, got {array.dtype}")


def _positive_int_parameter(config, name, default):
    value = config.get("parameters", {}).get(name, {}).get("string_value", "")
    if value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"config parameter {name} must be a positive integer, got {value!r}")
    return number


class TritonPythonModel:
    def initialize(self, args):
        self.t4 = None
        self.answers = None
        self._codes = {
            "invalid_arg": pb_utils.TritonError.INVALID_ARG,
            "unavailable": getattr(pb_utils.TritonError, "UNAVAILABLE", pb_utils.TritonError.INTERNAL),
            "internal": pb_utils.TritonError.INTERNAL,
        }
        model_config = json.loads(args["model_config"])
        self.name = model_config["name"]
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        try:
            self.config = load_serving_config(version_dir)
        except ServingConfigError as err:
            raise pb_utils.TritonModelException(f"{self.name}: {err}") from None
        tokenizer_dir = os.path.join(version_dir, TOKENIZER_DIR)
        try:
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
        except Exception as err:
            raise pb_utils.TritonModelException(f"{self.name}: cannot load the tokenizer from {tokenizer_dir}: {err}") from None
        try:
            workers = _positive_int_parameter(model_config, BLS_WORKERS_PARAMETER, BLS_WORKERS_DEFAULT)
            max_pending = max(workers, _positive_int_parameter(model_config, BLS_MAX_PENDING_PARAMETER, BLS_MAX_PENDING_DEFAULT))
        except ValueError as err:
            raise pb_utils.TritonModelException(f"{self.name}: {err}") from None
        self.timeout_s = self.config.tier_timeout_s
        self.timeout_us = int(self.timeout_s * 1e6)
        self.decoupled_tiers = self.config.target == "ngc"  # stock vllm backend: decoupled T2/T3
        base_url = self.config.t4_base_url()
        if base_url:
            from bls_router.circuit_breaker import CircuitBreaker
            from bls_router.t4_client import T4Client

            try:
                t4 = self.config.t4.with_env_overrides()
            except ServingConfigError as err:
                raise pb_utils.TritonModelException(f"{self.name}: {err}") from None
            breaker = CircuitBreaker(failure_threshold=t4.breaker_failures, reset_timeout_s=t4.breaker_reset_s)
            # a connection per routing thread: none waits for another's T4 call to finish
            self.t4 = T4Client(base_url, t4.model, t4.api_key_env, t4.timeout_s, t4.max_retries, breaker, max_workers=workers)
        else:
            pb_utils.Logger.log_warn(
                f"{self.name}: no T4 endpoint (t4.base_url empty and ROUTENLP_T4_BASE_URL unset): "
                "requests that need T4 fall back to T3"
            )
        # Import what the first request would otherwise import (encoders, answer parsing, labels).
        import bls_router.t1_codec  # noqa: F401
        from routenlp.answers import parse_output  # noqa: F401

        try:
            code = version_code(__file__)  # after the imports: it checks where they came from
        except RuntimeError as err:
            raise pb_utils.TritonModelException(f"{self.name}: {err}") from None

        self._create_metrics({"version": str(args["model_version"]), "instance": str(args.get("model_instance_name", self.name))})
        path = log_path()
        try:
            self.escalation_log = EscalationLog(path, keep_text=keep_text_from_env())
        except Exception as err:  # requests must not go unlogged: refuse to load instead
            raise pb_utils.TritonModelException(f"{self.name}: cannot open the escalation log {path}: {err}") from None
        calibration = self.config.calibration
        # "monitor" (optional): window / min_requests / relative_rise overrides, e.g. for a short test
        self.monitor = EscalationMonitor(calibration.get("escalation_baseline", {}), **calibration.get("monitor", {}))
        codec = TierCodec(self.config, tokenizer, self)
        self.service = RoutingService(
            self.config, codec.router, codec.tier, sink=self._log_record, bls_version=args["model_version"], code=code
        )
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        self.answers = WorkerPool(
            workers,
            max_pending=max_pending,
            send=lambda sender, response: sender.send(response, flags=final),
            fail=lambda err: self._error(f"internal error: {type(err).__name__}: {err}", "internal"),
            log_error=lambda message: pb_utils.Logger.log_error(f"{self.name}: {message}"),
            on_pending=self._set_in_flight,
            name=f"{self.name}-route",
        )
        pb_utils.Logger.log_info(
            f"{self.name}: version {args['model_version']} routes repository version {self.config.repository_version} "
            f"({len(self.config.tasks)} tasks, T4 {'at ' + base_url if base_url else 'not configured'}, escalation log {path}, "
            f"{workers} routing threads, up to {max_pending} requests in flight, "
            + (f"serving code {code} from its version folder)" if code else "serving code of the installed package)")
        )

    # ---- metrics ------------------------------------------------------------------------------

    def _create_metrics(self, owner):
        self._metrics_lock = threading.Lock()
        counter = pb_utils.MetricFamily.COUNTER
        families = {
            "requests": ("routenlp_requests_total", "Requests answered, by task and answering tier"),
            "escalations": ("routenlp_escalations_total", "Escalations out of a tier (u > delta), by task and tier"),
            "fallbacks": ("routenlp_fallbacks_total", "Tier calls that failed and were routed around, by task and failed tier"),
            "dollars": ("routenlp_cost_dollars_total", "Dollars spent, by task and tier"),
        }
        self.families, self.metrics = {}, {}
        for key, (name, description) in families.items():
            family = pb_utils.MetricFamily(name=name, description=description, kind=counter)
            self.families[key] = family
            self.metrics[key] = {
                (task, tier): family.Metric(labels={"task": task, "tier": tier, **owner}) for task in self.config.tasks for tier in TIERS
            }
        failures = pb_utils.MetricFamily(name="routenlp_request_failures_total", description="Requests answered with an error, by code", kind=counter)
        self.families["failures"] = failures
        self.failures = {code: failures.Metric(labels={"code": code, **owner}) for code in self._codes}
        log_failures = pb_utils.MetricFamily(name="routenlp_log_failures_total", description="Routed requests whose escalation-log append failed", kind=counter)
        self.families["log_failures"] = log_failures
        self.log_failures = log_failures.Metric(labels=owner)
        gauge = pb_utils.MetricFamily.GAUGE
        for key, name, description in (
            ("escalation_rate", "routenlp_escalation_rate", "Share of a task's recent requests that escalated (monitor window)"),
            ("escalation_alert", "routenlp_escalation_alert", "1 while a task's escalation rate is >10% above its calibration baseline"),
        ):
            family = pb_utils.MetricFamily(name=name, description=description, kind=gauge)
            self.families[key] = family
            self.metrics[key] = {task: family.Metric(labels={"task": task, **owner}) for task in self.config.tasks}
        in_flight = pb_utils.MetricFamily(name="routenlp_requests_in_flight", description="Requests accepted and not yet answered", kind=pb_utils.MetricFamily.GAUGE)
        self.families["in_flight"] = in_flight
        self.in_flight = in_flight.Metric(labels=owner)
        self.latency = {}
        histogram = getattr(pb_utils.MetricFamily, "HISTOGRAM", None)
        if histogram is not None:
            family = pb_utils.MetricFamily(name="routenlp_latency_ms", description="End-to-end routing latency in ms, by task", kind=histogram)
            self.families["latency"] = family
            self.latency = {task: family.Metric(labels={"task": task, **owner}, buckets=LATENCY_BUCKETS_MS) for task in self.config.tasks}

    def _observe(self, result):
        with self._metrics_lock:
            for key, rows in result.counters().items():
                for task, tier, amount in rows:
                    self.metrics[key][(task, tier)].increment(amount)
            task = result.request.task
            metric = self.latency.get(task)
            if metric is not None:
                metric.observe(result.metadata["total_ms"])
            if result.request.policy != ROUTED_POLICY:
                return  # baselines and ablations would distort the monitor's rate
            change = self.monitor.observe(task, result.outcome.escalations > 0)
            self.metrics["escalation_rate"][task].set(self.monitor.rate(task) or 0.0)
            if change is not None:
                self.metrics["escalation_alert"][task].set(1.0 if change.raised else 0.0)
                (pb_utils.Logger.log_warn if change.raised else pb_utils.Logger.log_info)(f"{self.name}: {change.message()}")

    def _log_record(self, record):
        try:
            self.escalation_log.append(record)
        except Exception as err:
            with self._metrics_lock:
                self.log_failures.increment(1)
            pb_utils.Logger.log_error(f"{self.name}: escalation log append failed for {record.get('request_id')}: {type(err).__name__}: {err}")

    # ---- TensorBackend: BLS calls and T4 ------------------------------------------------------

    def _infer(self, model, inputs, outputs):
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=list(outputs),
            inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
            timeout=self.timeout_us,
        )
        try:
            response = call_with_deadline(request.exec, self.timeout_s, model)
        except Exception as err:
            raise TierUnavailable(f"{model}: BLS call failed: {err}") from None
        if response.has_error():
            raise TierUnavailable(f"{model}: {response.error().message()}")
        found = {}
        for name in outputs:
            tensor = pb_utils.get_output_tensor_by_name(response, name)
            if tensor is None:
                raise TierUnavailable(f"{model}: response has no output {name}")
            # a copy: the array views the response's shared memory, released with the response
            found[name] = np.array(tensor.as_numpy(), copy=True)
        return found

    def router_logits(self, inputs, model):
        return self._infer(model, inputs, ["logits"])["logits"]

    def t1_logits(self, task, input_ids, attention_mask):
        return self._infer(f"t1_{task}", {"input_ids": input_ids, "attention_mask": attention_mask}, ["logits"])["logits"]

    def generate(self, tier, prompt, max_tokens):
        if tier == "t4":
            if self.t4 is None:
                raise TierUnavailable("t4: no endpoint configured (portfolio t4.base_url or ROUTENLP_T4_BASE_URL)")
            completion = self.t4.complete(prompt, max_tokens)
            return Generation(completion.text, completion.token_logprobs, completion.prompt_tokens, completion.completion_tokens)
        sampling = json.dumps({"max_tokens": int(max_tokens), "temperature": 0})
        inputs = {
            "text_input": np.array([[prompt.encode("utf-8")]], dtype=np.object_),
            "sampling_parameters": np.array([[sampling.encode("utf-8")]], dtype=np.object_),
            "exclude_input_in_output": np.array([[True]], dtype=bool),
            "return_num_input_tokens": np.array([[True]], dtype=bool),
            "return_num_output_tokens": np.array([[True]], dtype=bool),
        }
        if self.decoupled_tiers:
            return self._generate_decoupled(tier, inputs)
        out = self._infer(tier, inputs, ["text_output", "token_logprobs", "num_input_tokens", "num_output_tokens"])
        return Generation(
            _text(out["text_output"]),
            out["token_logprobs"].reshape(-1).astype(float).tolist(),
            int(out["num_input_tokens"].reshape(-1)[0]),
            int(out["num_output_tokens"].reshape(-1)[0]),
        )

    def _generate_decoupled(self, tier, inputs):
        """Stock vllm_backend (NGC target): inputs without a batch dimension, decoupled responses,
        logprobs from its `logprobs` JSON. Not exercised on this CPU build."""
        inputs = {name: value.reshape(-1) for name, value in inputs.items()}
        inputs["return_logprobs"] = np.array([True], dtype=bool)
        outputs = ["text_output", "logprobs", "num_input_tokens", "num_output_tokens"]
        request = pb_utils.InferenceRequest(
            model_name=tier, requested_output_names=outputs, inputs=[pb_utils.Tensor(n, v) for n, v in inputs.items()], timeout=self.timeout_us
        )
        try:
            responses = call_with_deadline(lambda: list(request.exec(decoupled=True)), self.timeout_s, tier)
        except Exception as err:
            raise TierUnavailable(f"{tier}: BLS call failed: {err}") from None
        last = None
        for response in responses:
            if response.has_error():
                raise TierUnavailable(f"{tier}: {response.error().message()}")
            if pb_utils.get_output_tensor_by_name(response, "text_output") is not None:
                last = response  # the final empty response carries no tensors
        if last is None:
            raise TierUnavailable(f"{tier}: no answer in the decoupled responses")
        get = lambda name: pb_utils.get_output_tensor_by_name(last, name).as_numpy().reshape(-1)  # noqa: E731
        return Generation(_text(get("text_output")), token_logprobs_from_vllm_json(get("logprobs")[0]), int(get("num_input_tokens")[0]), int(get("num_output_tokens")[0]))

    # ---- requests -----------------------------------------------------------------------------

    def _error(self, message, code):
        with self._metrics_lock:
            self.failures[code].increment(1)
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {message}", self._codes[code]))

    def _answer(self, routed):
        # No request.is_cancelled() here: in Triton 2.51 that check reaches
        # TRITONBACKEND_ResponseFactoryIsCancelled through the python backend, which crashed the
        # whole server (SIGSEGV, measured here during a 1,099-request coopt run; the same stack as
        # triton-inference-server/server#8192). A cancelled client simply drops the answer.
        try:
            result = self.service.route(routed)
        except RequestError as err:
            return self._error(str(err), "invalid_arg")
        except TierUnavailable as err:
            return self._error(f"no tier could answer: {err}", "unavailable")
        except Exception as err:  # a bug: answer this request, keep serving the others
            pb_utils.Logger.log_error(f"{self.name}: {type(err).__name__}: {err}")
            return self._error(f"internal error: {type(err).__name__}: {err}", "internal")
        try:
            self._observe(result)
        except Exception as err:  # metrics must never fail a request
            pb_utils.Logger.log_warn(f"{self.name}: metrics update failed: {type(err).__name__}: {err}")
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("OUTPUT", np.array([[result.output.encode("utf-8")]], dtype=np.object_)),
                pb_utils.Tensor("METADATA", np.array([[result.metadata_json().encode("utf-8")]], dtype=np.object_)),
            ]
        )

    def _accept(self, request):
        """None when the request was handed to a routing thread, else its error response."""
        try:
            # parsed here: the request's tensors live in shared memory released when execute returns
            routed = self.service.parse(*(_scalar(request, name) for name in INPUTS))
        except RequestError as err:
            return self._error(str(err), "invalid_arg")
        except Exception as err:
            pb_utils.Logger.log_error(f"{self.name}: {type(err).__name__}: {err}")
            return self._error(f"internal error: {type(err).__name__}: {err}", "internal")
        if not self.answers.submit(request.get_response_sender(), lambda: self._answer(routed)):
            return self._error(f"overloaded: {self.answers.max_pending} requests in flight on this instance; retry later", "unavailable")
        return None

    def _set_in_flight(self, pending):
        with self._metrics_lock:
            if self.in_flight is not None:
                self.in_flight.set(float(pending))

    def execute(self, requests):
        return [self._accept(request) for request in requests]

    def finalize(self):
        # Triton finalizes a version only once every response factory is gone, i.e. each accepted
        # request was answered; waiting here covers anything still on its way out.
        answers, self.answers = getattr(self, "answers", None), None
        if answers is not None:
            left = answers.close(DRAIN_TIMEOUT_S)
            if left:
                pb_utils.Logger.log_error(f"{self.name}: {left} requests still unanswered at unload")
        t4, self.t4 = getattr(self, "t4", None), None
        if t4 is not None:
            t4.close()
        log, self.escalation_log = getattr(self, "escalation_log", None), None
        if log is not None:
            log.close()
        # Metric objects must go before their MetricFamily (python_backend's rule).
        self.metrics, self.failures, self.latency, self.log_failures, self.in_flight = {}, {}, {}, None, None
        self.families = {}


def _text(array):
    value = np.asarray(array).reshape(-1)[0]
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
