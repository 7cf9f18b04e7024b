"""Triton python-backend model for the T2/T3 tiers: one vLLM engine built from `model.json`.

The CPU counterpart of triton-inference-server/vllm_backend with the same tensor names (see
bls_router/vllm_requests.py), but not decoupled (one response per request). As in vllm_backend,
execute() only schedules: it validates and tokenizes each request (a bad one gets its own
INVALID_ARG error there) and queues it; one engine thread drives vLLM's engine step by step
(continuous batching, as vLLM's own servers do): queued requests join between steps, up to the
`engine_batch` config parameter at once, and each is answered through its response sender as soon
as it finishes (bls_router/deferred.py says why execute() must stay short on Triton 2.51). An
engine failure answers the requests it held with UNAVAILABLE.

Prompts longer than the engine allows are cut from the left, keeping BOS and the tail (where
the 'answer:' cue is), exactly as the tiers were trained (fit_prompt_ids); num_input_tokens
reports the length actually used.

Config parameters whose names start with VLLM_ (VLLM_CPU_KVCACHE_SPACE, default 1 GiB) are
exported as environment variables before vLLM is imported, because vLLM reads them at import.
"""

import os
import sys

# This version's own serving code (code/, bls_router/version_code.py) comes first on the path: a
# rolled-back version runs the code it was written with, not the checkout's.
_CODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "code")
if os.path.isdir(_CODE):
    sys.path.insert(0, _CODE)

# The embedded interpreter starts in the C locale; torch then fails reading its UTF-8 templates.
# This must run before anything imports torch or vllm (docs/STACK.md, trap 2).
import locale  # noqa: E402

locale.setlocale(locale.LC_CTYPE, "C.UTF-8")

import json  # noqa: E402
import time  # noqa: E402

import triton_python_backend_utils as pb_utils  # noqa: E402

from bls_router.deferred import StepLoop  # noqa: E402
from bls_router.version_code import version_code  # noqa: E402
from bls_router.vllm_requests import (  # noqa: E402
    INPUT_NAMES,
    RequestError,
    build_output_arrays,
    completion_from_vllm,
    fit_prompt_ids,
    parse_request,
)
from routenlp_core.vllm_engine_args import (  # noqa: E402
    ENGINE_BATCH_DEFAULT,
    ENGINE_BATCH_PARAMETER,
    KVCACHE_GIB_DEFAULT,
    KVCACHE_PARAMETER,
    EngineArgsError,
    read_engine_args,
)

DRAIN_TIMEOUT_S = 120.0


def _error(message: str, code) -> "pb_utils.InferenceResponse":
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class EngineUnavailable(RuntimeError):
    """The engine is down or broken: the router should fall back to another tier."""

    @classmethod
    def from_error(cls, err: BaseException) -> "EngineUnavailable":
        return cls(f"vLLM engine unavailable: {type(err).__name__}: {err}")


class _EngineSteps:
    """bls_router.deferred.StepEngine over vLLM's LLMEngine: the loop LLM.generate runs, one step
    at a time, so requests can join and leave between steps."""

    def __init__(self, llm, client_errors: tuple[type[BaseException], ...]) -> None:
        self._engine = llm.llm_engine
        self._client_errors = client_errors

    def add(self, key, prepared) -> None:
        prompt, params, _ = prepared
        try:
            self._engine.add_request(key, prompt, params)
        except self._client_errors as err:
            raise RequestError(f"request rejected by the engine: {err}") from None
        except Exception as err:  # e.g. EngineDeadError: the engine-core process is gone
            raise EngineUnavailable.from_error(err) from None

    def step(self):
        try:
            outputs = self._engine.step()
        except Exception as err:
            raise EngineUnavailable.from_error(err) from None
        return [(output.request_id, output) for output in outputs if output.finished]

    def abort(self, keys) -> None:
        self._engine.abort_request(list(keys))

    def has_unfinished(self) -> bool:
        return self._engine.has_unfinished_requests()

    def answer(self, prepared, output):
        arrays = build_output_arrays(prepared[2], completion_from_vllm(output))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, array) for name, array in arrays.items()])


class TritonPythonModel:
    def initialize(self, args):
        self.llm = None
        self.batches = None
        # pb_utils.TritonError exists only once the stub runs the model, not at import time.
        # UNAVAILABLE tells the router "tier down, fall back"; INTERNAL on builds that lack it.
        self._unavailable = getattr(pb_utils.TritonError, "UNAVAILABLE", pb_utils.TritonError.INTERNAL)
        config = json.loads(args["model_config"])
        self.name = config["name"]
        if pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(f"{self.name}: this adapter answers once per request; set decoupled false")
        if int(config.get("max_batch_size", 0)) < 1:
            raise pb_utils.TritonModelException(f"{self.name}: needs max_batch_size >= 1 (tensors carry a batch dimension)")
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        try:
            engine_args = read_engine_args(version_dir)
            self.code = version_code(__file__)
        except (EngineArgsError, RuntimeError) as err:
            raise pb_utils.TritonModelException(f"{self.name}: {err}") from None

        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        engine_batch = parameters.get(ENGINE_BATCH_PARAMETER, "") or ENGINE_BATCH_DEFAULT
        if not engine_batch.isdigit() or int(engine_batch) < 1:
            raise pb_utils.TritonModelException(f"{self.name}: config parameter {ENGINE_BATCH_PARAMETER} must be a positive integer, got {engine_batch!r}")
        os.environ.setdefault(KVCACHE_PARAMETER, KVCACHE_GIB_DEFAULT)
        os.environ.update({key: value for key, value in parameters.items() if key.startswith("VLLM_")})
        # Imported here, after the environment is set, because vLLM reads it at import time.
        from vllm import LLM, SamplingParams
        from vllm.exceptions import VLLMClientError

        self._sampling_params = SamplingParams
        self._client_errors = (ValueError, TypeError, VLLMClientError)
        started = time.perf_counter()
        try:
            self.llm = LLM(**engine_args)
            self.tokenizer = self.llm.get_tokenizer()
            self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        except Exception as err:
            self.finalize()
            raise pb_utils.TritonModelException(
                f"{self.name}: vLLM engine failed to start from {engine_args['model']} "
                f"with {sorted(engine_args)}: {type(err).__name__}: {err}"
            ) from None
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        self.batches = StepLoop(
            _EngineSteps(self.llm, self._client_errors),
            max_running=int(engine_batch),
            send=lambda sender, response: sender.send(response, flags=final),
            fail=self._error_response,
            log_error=lambda message: pb_utils.Logger.log_error(f"{self.name}: {message}"),
            name=f"{self.name}-engine",
        )
        pb_utils.Logger.log_info(
            f"{self.name}: vLLM engine ready in {time.perf_counter() - started:.1f} s "
            f"(model {engine_args['model']}, max_model_len {self.max_model_len}, up to {engine_batch} requests in the engine at once)"
        )

    def _prepare(self, request):
        """(engine prompt, SamplingParams, parsed request) or RequestError for a client mistake."""
        inputs = {}
        for name in INPUT_NAMES:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        parsed = parse_request(inputs)
        try:
            params = self._sampling_params(**parsed.sampling)
        except self._client_errors as err:
            raise RequestError(f"sampling_parameters rejected by vLLM: {err}") from None
        ids = self.tokenizer.encode(parsed.prompt, add_special_tokens=True)
        fitted = fit_prompt_ids(
            ids, max_tokens=parsed.sampling["max_tokens"], max_model_len=self.max_model_len, bos_id=self.tokenizer.bos_token_id
        )
        if len(fitted) < len(ids):
            pb_utils.Logger.log_verbose(f"{self.name}: prompt cut from {len(ids)} to {len(fitted)} tokens")
        return {"prompt_token_ids": fitted}, params, parsed

    def _error_response(self, err: BaseException):
        if isinstance(err, RequestError):
            return _error(f"{self.name}: {err}", pb_utils.TritonError.INVALID_ARG)
        if isinstance(err, EngineUnavailable):
            pb_utils.Logger.log_error(f"{self.name}: {err}")
            return _error(f"{self.name}: {err}", self._unavailable)
        return _error(f"{self.name}: {type(err).__name__}: {err}", pb_utils.TritonError.INTERNAL)

    def _accept(self, request):
        """None when the request was queued for the engine thread, else its error response."""
        try:
            # prepared here: the request's tensors live in shared memory released when execute returns
            prepared = self._prepare(request)
        except RequestError as err:
            return _error(f"{self.name}: {err}", pb_utils.TritonError.INVALID_ARG)
        except Exception as err:
            return _error(f"{self.name}: {type(err).__name__}: {err}", pb_utils.TritonError.INTERNAL)
        self.batches.submit(request.get_response_sender(), prepared)
        return None

    def execute(self, requests):
        # No request.is_cancelled(): in Triton 2.51 the check is a stub->parent message answered by
        # a second parent thread (TRITONBACKEND_ResponseFactoryIsCancelled); the same check in the
        # BLS crashed the whole server (SIGSEGV, see routenlp_bls.py). A cancelled request costs
        # one generation; its answer is dropped.
        return [self._accept(request) for request in requests]

    def finalize(self):
        # Answers what is queued, then stops the engine-core process and frees its KV cache.
        batches, self.batches = getattr(self, "batches", None), None
        if batches is not None:
            left = batches.close(DRAIN_TIMEOUT_S)
            if left:
                pb_utils.Logger.log_error(f"{self.name}: {left} requests still unanswered at unload")
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as err:
            pb_utils.Logger.log_warn(f"{getattr(self, 'name', 'vllm tier')}: engine shutdown: {type(err).__name__}: {err}")
