"""Triton python-backend model `routenlp`: the routing BLS (thin adapter over bls_router.service).

Inputs (one request = one text, shape [1, 1] with the batch dimension):
  TEXT BYTES, TASK BYTES, optional MAX_TIER BYTES ("t1".."t4"), optional REQUEST_ID BYTES,
  optional POLICY BYTES ("routenlp" default; "always-t1".."always-t4": fixed-tier baselines;
  "routenlp-no-cascade", "routenlp-fixed-threshold": the cascade ablations;
  "routenlp-router-no-cost", "routenlp-router-no-quality": the router ablations)
Outputs: OUTPUT BYTES (JSON {"label"} / {"entities", "tags"} for structured tasks, the text for
generation tasks) and METADATA BYTES (JSON: tier, path, u, cost, latencies, fallback, versions).

The version folder holds serving_config.json (routenlp_core/serving_config.py) and the shared
tokenizer. Tier calls: the router and T1 run as ONNX Runtime sessions in this process, loaded from
the model versions the config's repository_version pins (bls_router/inprocess_onnx.py; config
parameter `inprocess_onnx` "0": BLS requests to `router` and `t1_<task>` instead); `t2`, `t3` are
BLS requests and T4 HTTP calls (T4Client; base URL from ROUTENLP_T4_BASE_URL or the config, key
from the env variable the config names). A failed tier call raises TierUnavailable so the cascade
falls back; errors per request: RequestError -> INVALID_ARG, no tier left -> UNAVAILABLE, a bug ->
INTERNAL (the batch keeps serving).

execute() validates each request's inputs (a client mistake is answered there, INVALID_ARG). A
request that can reach only the in-process models (MAX_TIER t1, or always-t1) is answered there
too (about a millisecond); every other one goes to a pool of routing threads (bls_router/deferred.py),
which answer it through its response sender: the model stays non-decoupled for clients, and
execute() never runs long enough for Triton 2.51's stub health check to break the shared-memory
protocol (the server crash described in the README). Config parameters: `workers` (routing threads
per instance), `max_pending` (requests accepted at once per instance; beyond it, UNAVAILABLE
"overloaded") and `overlap_t1`. A BLS call to a tier waits at most tier_timeout_s (a tier whose
stub died never answers).

Every routed request is appended to the durable escalation log (bls_router/escalation_log.py;
path from ROUTENLP_ESCALATION_LOG) before its response is sent, and fed to the escalation-rate
monitor (bls_router/escalation_monitor.py), whose alerts are logged and exported as gauges.

Custom metrics (Triton /metrics, created once in initialize): routenlp_requests_total,
routenlp_escalations_total, routenlp_fallbacks_total, routenlp_cost_dollars_total (labels task,
tier), routenlp_request_failures_total (label code), routenlp_log_failures_total, the
routenlp_latency_ms histogram (task) and the gauges routenlp_escalation_rate,
routenlp_escalation_alert (task; 1 while the rate is >10% above its calibration baseline), and
routenlp_requests_in_flight (accepted by this instance, not yet answered; sampled once a second),
routenlp_stage_seconds_total (stage) and routenlp_stage_requests_total: where routed requests'
time went (routenlp_core/stage_times.py; read by `routenlp perf`). Requests only record their
updates (bls_router/pending_metrics.py); one publisher thread puts them on the metric objects once
a second, so /metrics is up to a second behind the answers.
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

# The embedded interpreter starts in the C locale; torch (which transformers may pull in for the
# tokenizer) then fails reading its UTF-8 templates. Must run before those imports.
import locale  # noqa: E402

locale.setlocale(locale.LC_CTYPE, "C.UTF-8")

import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from bls_router.deferred import WorkerPool, call_with_deadline  # noqa: E402
from bls_router.escalation_log import EscalationLog, keep_text_from_env, log_path  # noqa: E402
from bls_router.escalation_monitor import EscalationMonitor  # noqa: E402
from bls_router.inprocess_onnx import (  # noqa: E402
    INPROCESS_ONNX_DEFAULT,
    INPROCESS_ONNX_PARAMETER,
    OnnxSessions,
    pinned_onnx_files,
)
from bls_router.pending_metrics import PUBLISH_INTERVAL_S, PendingMetrics  # noqa: E402
from bls_router.service import (  # noqa: E402
    ROUTED_POLICY,
    Generation,
    RequestError,
    RoutingService,
    TierCodec,
    allowed_tiers,
    token_logprobs_from_vllm_json,
)
from bls_router.version_code import version_code  # noqa: E402
from routenlp_core.cascade import TIERS, TierUnavailable  # noqa: E402
from routenlp_core.contract import (  # noqa: E402
    FIXED_TIER_POLICIES,
    INPUTS,
    METADATA,
    OUTPUT,
    ROUTER_ABLATION_POLICIES,
    ROUTER_MODEL,
)
from routenlp_core.serving_config import (  # noqa: E402
    BLS_MAX_PENDING_DEFAULT,
    BLS_MAX_PENDING_PARAMETER,
    BLS_WORKERS_DEFAULT,
    BLS_WORKERS_PARAMETER,
    TOKENIZER_DIR,
    ServingConfigError,
    load_serving_config,
)
from routenlp_core.stage_times import STAGES, StageTimes, StageTotals, activate  # noqa: E402
from routenlp_core.stage_times import current as current_stage_times  # noqa: E402

BLS_OVERLAP_PARAMETER = "overlap_t1"
DRAIN_TIMEOUT_S = 120.0
INLINE_COMMIT_WAIT_S = 0.2  # longest execute() waits for an inline answer's log commit
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


def _parameter(config, name, default=""):
    return config.get("parameters", {}).get(name, {}).get("string_value", default)


def _positive_int_parameter(config, name, default):
    value = _parameter(config, name)
    if value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"config parameter {name} must be a positive integer, got {value!r}")
    return number


@dataclass(slots=True)
class InlineAnswer:
    """A request answered on execute()'s thread, held until its log record is committed."""

    index: int  # position in execute()'s batch
    times: StageTimes
    response: object  # the pb_utils.InferenceResponse to send
    commit: object  # the record's Commit on the writer thread, or None (written inline, or no record)
    record: object  # the escalation-log record, or None when the request logs nothing


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
        self.sessions = None
        if _parameter(model_config, INPROCESS_ONNX_PARAMETER, INPROCESS_ONNX_DEFAULT) != "0":
            self.sessions = self._load_sessions(os.path.dirname(os.path.abspath(args["model_repository"])))
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
        import routenlp_core.t1_codec  # noqa: F401
        from routenlp_core.answers import parse_output  # noqa: F401

        try:
            code = version_code(__file__)  # after the imports: it checks where they came from
        except RuntimeError as err:
            raise pb_utils.TritonModelException(f"{self.name}: {err}") from None

        self._create_metrics({"version": str(args["model_version"]), "instance": str(args.get("model_instance_name", self.name))})
        path = log_path()
        try:
            self.escalation_log = EscalationLog(
                path, keep_text=keep_text_from_env(), direct_busy_s=INLINE_COMMIT_WAIT_S
            )
        except Exception as err:  # requests must not go unlogged: refuse to load instead
            raise pb_utils.TritonModelException(f"{self.name}: cannot open the escalation log {path}: {err}") from None
        calibration = self.config.calibration
        # "monitor" (optional): window / min_requests / relative_rise overrides, e.g. for a short test
        self.monitor = EscalationMonitor(calibration.get("escalation_baseline", {}), **calibration.get("monitor", {}))
        codec = TierCodec(self.config, tokenizer, self)
        # a thread per routing thread for the T1 call that overlaps the router call (parameter
        # overlap_t1 "0": one call after the other, for a saturated machine with no core to spare).
        # Default: on for BLS calls (~1 ms each), off for in-process sessions (~0.15 ms each, less
        # than the thread handoff costs; and execute()'s inline answers stay on its own thread).
        overlap = _parameter(model_config, BLS_OVERLAP_PARAMETER, "0" if self.sessions is not None else "1") != "0"
        self.overlap = ThreadPoolExecutor(workers, thread_name_prefix=f"{self.name}-t1") if overlap else None
        self.service = RoutingService(
            self.config, codec.router, codec.tier, bls_version=args["model_version"], overlap=self.overlap, code=code
        )  # no sink: _answer queues each record itself and waits for its commit just before sending
        self.answers = WorkerPool(
            workers,
            max_pending=max_pending,
            send=self._send,
            fail=lambda err: self._error(f"internal error: {type(err).__name__}: {err}", "internal"),
            log_error=lambda message: pb_utils.Logger.log_error(f"{self.name}: {message}"),
            name=f"{self.name}-route",
        )
        pb_utils.Logger.log_info(
            f"{self.name}: version {args['model_version']} routes repository version {self.config.repository_version} "
            f"({len(self.config.tasks)} tasks, T4 {'at ' + base_url if base_url else 'not configured'}, escalation log {path}, "
            f"{workers} routing threads, up to {max_pending} requests in flight, "
            + ("router/T1 in-process sessions, " if self.sessions is not None else "router/T1 over BLS calls, ")
            + (f"serving code {code} from its version folder)" if code else "serving code of the installed package)")
        )

    def _load_sessions(self, repository):
        """The router and T1 sessions of the model versions this version's repository_version serves
        (the repository manifest): None, and BLS calls instead, when the manifest does not name them."""
        models = [ROUTER_MODEL, *(f"t1_{task}" for task in self.config.t1)]
        version = self.config.repository_version
        try:
            files = pinned_onnx_files(repository, version, models)
        except (KeyError, OSError, ValueError) as err:
            files, reason = {}, f"{type(err).__name__}: {err}"
        else:
            reason = f"no model.onnx for {sorted(set(models) - set(files))}"
        if set(files) != set(models):
            pb_utils.Logger.log_warn(
                f"{self.name}: router/T1 of repository version {version} not found in {repository} ({reason}): BLS calls instead"
            )
            return None
        try:
            return OnnxSessions(files)
        except ImportError as err:  # an image without onnxruntime for the BLS: Triton's models serve
            pb_utils.Logger.log_warn(f"{self.name}: no onnxruntime in the BLS ({err}): router/T1 over BLS calls")
            return None
        except Exception as err:
            raise pb_utils.TritonModelException(f"{self.name}: cannot load the in-process ONNX sessions: {err}") from None

    # ---- metrics ------------------------------------------------------------------------------

    def _create_metrics(self, owner):
        self._metrics_lock = threading.Lock()  # the metric objects: the publisher thread, finalize
        self._monitor_lock = threading.Lock()
        self.pending = PendingMetrics()  # what the routing threads record, published once a second
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
        stage_family = pb_utils.MetricFamily(
            name="routenlp_stage_seconds_total", description="Time routed requests spent per stage of the BLS", kind=counter
        )
        self.families["stage_seconds"] = stage_family
        self.stage_seconds = {stage: stage_family.Metric(labels={"stage": stage, **owner}) for stage in STAGES}
        stage_requests = pb_utils.MetricFamily(
            name="routenlp_stage_requests_total", description="Requests counted in routenlp_stage_seconds_total", kind=counter
        )
        self.families["stage_requests"] = stage_requests
        self.stage_requests = stage_requests.Metric(labels=owner)
        self.stage_totals = StageTotals()
        self.latency = {}
        histogram = getattr(pb_utils.MetricFamily, "HISTOGRAM", None)
        if histogram is not None:
            family = pb_utils.MetricFamily(name="routenlp_latency_ms", description="End-to-end routing latency in ms, by task", kind=histogram)
            self.families["latency"] = family
            self.latency = {task: family.Metric(labels={"task": task, **owner}, buckets=LATENCY_BUCKETS_MS) for task in self.config.tasks}
        self._published_stages = (0, dict.fromkeys(STAGES, 0))
        self._stop_publishing = threading.Event()
        threading.Thread(target=self._publish_loop, name=f"{self.name}-metrics", daemon=True).start()

    def _publish_loop(self):
        """Once a second, what the routing threads recorded onto the metric objects: only this
        thread (and finalize) touches them, each update being a message to the server."""
        while not self._stop_publishing.wait(PUBLISH_INTERVAL_S):
            answers = self.answers
            if answers is not None:  # sampled here: two gauge updates per request cost ~0.1 ms of it
                self.pending.set("in_flight", None, float(answers.pending))
            if not self._publish():
                return

    def _publish(self):
        """Publishes the pending updates and the stage totals' growth; False once finalize cleared the metrics."""
        updates = self.pending.drain()
        requests, ns = self.stage_totals.snapshot()
        with self._metrics_lock:
            if self.stage_requests is None:
                return False
            published_requests, published_ns = self._published_stages
            self.stage_requests.increment(requests - published_requests)
            for stage, total in ns.items():
                self.stage_seconds[stage].increment((total - published_ns.get(stage, 0)) / 1e9)
            self._published_stages = (requests, ns)
            for (family, key), amount in updates.counters.items():
                self._series(family, key).increment(amount)
            for (family, key), values in updates.observations.items():
                metric = self._series(family, key)
                for value in values:
                    metric.observe(value)
            for (family, key), value in updates.gauges.items():
                self._series(family, key).set(value)
        return True

    def _series(self, family, key):
        """The metric object of a pending update's (family, key)."""
        if family == "failures":
            return self.failures[key]
        if family == "log_failures":
            return self.log_failures
        if family == "in_flight":
            return self.in_flight
        if family == "latency":
            return self.latency[key]
        return self.metrics[family][key]

    def _observe(self, result):
        task = result.request.task
        self.pending.add_many(result.counters())
        if task in self.latency:
            self.pending.observe("latency", task, result.metadata["total_ms"])
        if result.request.policy != ROUTED_POLICY:
            return  # baselines and ablations would distort the monitor's rate
        with self._monitor_lock:
            change = self.monitor.observe(task, result.outcome.escalations > 0)
            rate = self.monitor.rate(task) or 0.0
        self.pending.set("escalation_rate", task, rate)
        if change is not None:
            self.pending.set("escalation_alert", task, 1.0 if change.raised else 0.0)
            (pb_utils.Logger.log_warn if change.raised else pb_utils.Logger.log_info)(f"{self.name}: {change.message()}")

    def _log_record(self, record):
        """Queues the record on the log's writer; returns its Commit (None when the append failed:
        counted and logged, never the request's failure). The answer goes only after the commit."""
        try:
            return self.escalation_log.submit(record)
        except Exception as err:
            self._log_failed(record, err)
            return None

    def _wait_commit(self, commit, record):
        """Waits for the record's commit (up to the tier timeout); a failure is counted and logged."""
        if commit is None:
            return
        try:
            commit.wait(self.timeout_s)
        except Exception as err:
            self._log_failed(record, err)

    def _log_failed(self, record, err):
        self.pending.add("log_failures", None, 1.0)
        pb_utils.Logger.log_error(f"{self.name}: escalation log append failed for {record.get('request_id')}: {type(err).__name__}: {err}")

    # ---- TensorBackend: BLS calls and T4 ------------------------------------------------------

    def _infer(self, model, inputs, outputs, *, deadline=True):
        """One BLS call, or a run of the model's in-process session (router, T1; inprocess_onnx).
        deadline=False for the ONNX models: they answer inside execute(), so a
        stub that dies still gets its batch answered by the backend ("not healthy"), and the
        thread the deadline needs (~1-2 ms per call, measured) is saved; decoder tiers answer
        through their response sender, where a dead stub means no answer ever: they keep it."""
        sessions = self.sessions
        if sessions is not None and model in sessions:
            try:
                return sessions.run(model, inputs, outputs)
            except Exception as err:
                raise TierUnavailable(f"{model} (in-process session): {type(err).__name__}: {err}") from None
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=list(outputs),
            inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
            timeout=self.timeout_us,
        )
        try:
            response = call_with_deadline(request.exec, self.timeout_s, model) if deadline else request.exec()
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
        return self._infer(model, inputs, ["logits"], deadline=False)["logits"]

    def t1_logits(self, task, input_ids, attention_mask):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self._infer(f"t1_{task}", inputs, ["logits"], deadline=False)["logits"]

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
        self.pending.add("failures", code, 1.0)
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {message}", self._codes[code]))

    def _send(self, sender, response):
        """Sends the answer; the routing thread's StageTimes (set by _answer) then go to the totals."""
        times = current_stage_times()
        with times.span("response"):
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        self._count_stages(times)
        activate(None)

    def _count_stages(self, times):
        if isinstance(times, StageTimes) and times.ns:
            self.stage_totals.add(times)

    def _answer(self, routed, times):
        """A routing thread's answer: routed, logged, committed (the thread's current() stays
        `times` until _send, which runs right after on this same thread)."""
        activate(times)
        response, commit, record = self._prepare(routed, times, queue_log=True)
        with times.span("log"):  # the durability promise: the record is committed before the answer goes
            self._wait_commit(commit, record)
        return response

    def _prepare(self, routed, times, queue_log):
        """(response, the log record's Commit or None, the record): routed, the record queued on
        the log's writer (queue_log; else the caller writes it), metrics recorded, response built.
        Sent only once the record is committed."""
        # No request.is_cancelled() here: in Triton 2.51 that check reaches
        # TRITONBACKEND_ResponseFactoryIsCancelled through the python backend, which crashed the
        # whole server (SIGSEGV, measured here during a 1,099-request coopt run; the same stack as
        # triton-inference-server/server#8192). A cancelled client simply drops the answer.
        try:
            result = self.service.route(routed)
        except RequestError as err:
            return self._error(str(err), "invalid_arg"), None, None
        except TierUnavailable as err:
            return self._error(f"no tier could answer: {err}", "unavailable"), None, None
        except Exception as err:  # a bug: answer this request, keep serving the others
            pb_utils.Logger.log_error(f"{self.name}: {type(err).__name__}: {err}")
            return self._error(f"internal error: {type(err).__name__}: {err}", "internal"), None, None
        commit = None
        if queue_log:
            with times.span("log"):
                commit = self._log_record(result.record)
        try:
            with times.span("metrics"):
                self._observe(result)
        except Exception as err:  # metrics must never fail a request
            pb_utils.Logger.log_warn(f"{self.name}: metrics update failed: {type(err).__name__}: {err}")
        with times.span("metadata"):
            metadata = result.metadata_json().encode("utf-8")
        with times.span("response"):
            response = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(OUTPUT, np.array([[result.output.encode("utf-8")]], dtype=np.object_)),
                    pb_utils.Tensor(METADATA, np.array([[metadata]], dtype=np.object_)),
                ]
            )
        return response, commit, result.record

    def _inline(self, routed):
        """Whether execute() answers the request itself: every model it can reach runs in this
        process (the router and T1 sessions; MAX_TIER t1 or always-t1), so it never waits on
        another stub or T4, and a thread handoff and the response sender's round trip are saved."""
        if self.sessions is None or allowed_tiers(routed.task, routed.max_tier, self.config) != ["t1"]:
            return False
        return routed.policy in FIXED_TIER_POLICIES or ROUTER_ABLATION_POLICIES.get(routed.policy, ROUTER_MODEL) in self.sessions

    def _parse(self, request, times):
        """(the parsed request, None) or (None, its error response)."""
        try:
            # parsed here: the request's tensors live in shared memory released when execute returns
            with times.span("decode"):
                return self.service.parse(*(_scalar(request, name) for name in INPUTS)), None
        except RequestError as err:
            return None, self._error(str(err), "invalid_arg")
        except Exception as err:
            pb_utils.Logger.log_error(f"{self.name}: {type(err).__name__}: {err}")
            return None, self._error(f"internal error: {type(err).__name__}: {err}", "internal")

    def _defer(self, request, work):
        """Hands the request to a routing thread (None), or its UNAVAILABLE answer when too many are in flight."""
        if not self.answers.submit(request.get_response_sender(), work):
            return self._error(f"overloaded: {self.answers.max_pending} requests in flight on this instance; retry later", "unavailable")
        return None

    def execute(self, requests):
        """Requests that can reach only the in-process models are answered here; the others go to
        the routing threads. An inline answer leaves only once its log record is committed: the
        batch's records in one transaction on this thread (_write_inline); when another writer
        holds the log longer than INLINE_COMMIT_WAIT_S they go to the log's writer thread, and a
        commit not done within INLINE_COMMIT_WAIT_S more is left to a routing thread (execute()
        must stay short: see bls_router/deferred.py)."""
        responses = [None] * len(requests)
        inline = []
        for index, request in enumerate(requests):
            times = StageTimes()
            routed, error = self._parse(request, times)
            if error is not None:
                responses[index] = error
            elif self._inline(routed):
                activate(times)
                try:
                    inline.append(InlineAnswer(index, times, *self._prepare(routed, times, queue_log=False)))
                finally:
                    activate(None)
            else:
                responses[index] = self._defer(request, lambda routed=routed, times=times: self._answer(routed, times))
        self._write_inline(inline)
        for item in inline:
            with item.times.span("log"):
                ready = item.commit is None or item.commit.done(INLINE_COMMIT_WAIT_S)
            if ready:
                self._wait_commit(item.commit, item.record)  # its outcome: a failed commit is counted here
                self._count_stages(item.times)
                responses[item.index] = item.response
                continue

            def finish(item=item):
                activate(item.times)
                with item.times.span("log"):
                    self._wait_commit(item.commit, item.record)
                return item.response

            responses[item.index] = self._defer(requests[item.index], finish)
        return responses

    def _write_inline(self, inline):
        """Commits the inline answers' records in one transaction on the execute thread. Answers
        whose records could not be written so (the log busy past INLINE_COMMIT_WAIT_S) get a Commit
        from the writer thread instead; a failed write is counted and logged per record, as a
        failed commit is."""
        logged = [item for item in inline if item.record is not None]
        if not logged:
            return
        started = time.perf_counter_ns()
        try:
            written = self.escalation_log.write([item.record for item in logged])
        except Exception as err:  # as a failed commit: counted and logged, the answers still go
            written = True  # nothing to hand to the writer thread
            for item in logged:
                self._log_failed(item.record, err)
        share = (time.perf_counter_ns() - started) // len(logged)  # the one wait, split over its requests
        for item in logged:
            item.times.add("log", share)
            if not written:
                item.commit = self._log_record(item.record)

    def finalize(self):
        # Triton finalizes a version only once every response factory is gone, i.e. each accepted
        # request was answered; waiting here covers anything still on its way out.
        answers, self.answers = getattr(self, "answers", None), None
        if answers is not None:
            left = answers.close(DRAIN_TIMEOUT_S)
            if left:
                pb_utils.Logger.log_error(f"{self.name}: {left} requests still unanswered at unload")
        overlap, self.overlap = getattr(self, "overlap", None), None
        if overlap is not None:
            overlap.shutdown(wait=False)
        t4, self.t4 = getattr(self, "t4", None), None
        if t4 is not None:
            t4.close()
        log, self.escalation_log = getattr(self, "escalation_log", None), None
        if log is not None:
            log.close()
        stop = getattr(self, "_stop_publishing", None)
        if stop is not None:
            stop.set()
            try:
                self._publish()  # the last second's updates
            except Exception as err:
                pb_utils.Logger.log_warn(f"{self.name}: last metrics publish failed: {type(err).__name__}: {err}")
        # Metric objects must go before their MetricFamily (python_backend's rule).
        with getattr(self, "_metrics_lock", threading.Lock()):
            self.metrics, self.failures, self.latency, self.log_failures, self.in_flight = {}, {}, {}, None, None
            self.stage_seconds, self.stage_requests = {}, None
        self.families = {}


def _text(array):
    value = np.asarray(array).reshape(-1)[0]
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
