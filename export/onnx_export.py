"""ONNX export of the router and the T1 heads, driven by one I/O spec per model.

An `IOSpec` names every input and output with its dtype and its axes (a string axis is dynamic,
an int is fixed). The same object drives `torch.onnx.export` (input/output names, dynamic axes),
the dummy export inputs, the Triton config (`triton_inputs` / `triton_outputs` / `model_spec` give
export.triton_config TensorSpecs with -1 for dynamic dims) and the tensor names the BLS code and
the onnxruntime wrappers use, so they cannot drift apart.

After export, `parity_check` runs torch and ONNX Runtime on real inputs and refuses a model whose
outputs differ by more than `atol`; `latency_table` measures both.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.triton_config import ModelSpec, TensorSpec
from routenlp_core.contract import ROUTER_MODEL

BATCH, SEQUENCE = "batch", "sequence"
NUMPY_DTYPES = {"INT64": np.int64, "FP32": np.float32}
TORCH_DTYPES = {"INT64": torch.int64, "FP32": torch.float32}


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with torch (names, shapes or values): the export must not ship."""


@dataclass(frozen=True)
class TensorIO:
    name: str
    dtype: str  # Triton spelling: "INT64" or "FP32"
    axes: tuple[str | int, ...]  # str = dynamic axis (its symbolic name), int = fixed size

    def __post_init__(self) -> None:
        if self.dtype not in NUMPY_DTYPES:
            raise ValueError(f"tensor {self.name}: dtype {self.dtype!r} is not one of {', '.join(NUMPY_DTYPES)}")

    @property
    def numpy_dtype(self) -> type:
        return NUMPY_DTYPES[self.dtype]

    def dims(self, *, drop_batch: bool = False) -> tuple[int, ...]:
        """Triton dims: -1 for dynamic axes; without the leading batch axis when Triton batches."""
        axes = self.axes
        if drop_batch:
            if not axes or axes[0] != BATCH:
                raise ValueError(f"tensor {self.name} has no leading batch axis to drop")
            axes = axes[1:]
            if not axes:
                raise ValueError(f"tensor {self.name}: a batched Triton tensor needs a dim besides the batch axis")
        return tuple(-1 if isinstance(axis, str) else int(axis) for axis in axes)


@dataclass(frozen=True)
class IOSpec:
    """Names, dtypes and axes of one exported model's inputs and outputs (in forward() order)."""

    model: str
    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            t.name: {i: axis for i, axis in enumerate(t.axes) if isinstance(axis, str)}
            for t in (*self.inputs, *self.outputs)
        }

    def tensor(self, name: str) -> TensorIO:
        for t in (*self.inputs, *self.outputs):
            if t.name == name:
                return t
        raise KeyError(f"{self.model} has no tensor {name!r}; tensors: {', '.join(self.input_names + self.output_names)}")

    def triton_inputs(self, max_batch_size: int = 0) -> list[TensorSpec]:
        return [TensorSpec(t.name, t.dtype, t.dims(drop_batch=max_batch_size > 0)) for t in self.inputs]

    def triton_outputs(self, max_batch_size: int = 0) -> list[TensorSpec]:
        return [TensorSpec(t.name, t.dtype, t.dims(drop_batch=max_batch_size > 0)) for t in self.outputs]

    def model_spec(self, *, max_batch_size: int = 0, name: str | None = None, **kwargs: Any) -> ModelSpec:
        """A triton_config.ModelSpec with this spec's tensors (kwargs: backend, platform, ...)."""
        return ModelSpec(
            name=name or self.model,
            inputs=self.triton_inputs(max_batch_size),
            outputs=self.triton_outputs(max_batch_size),
            max_batch_size=max_batch_size,
            **kwargs,
        )

    def dummy_inputs(self, batch: int = 2, sequence: int = 8) -> dict[str, np.ndarray]:
        """Small valid inputs for tracing: token id 0 (<s>), full attention, task id 0."""
        sizes = {BATCH: batch, SEQUENCE: sequence}
        out = {}
        for t in self.inputs:
            shape = tuple(sizes.get(a, 1) if isinstance(a, str) else a for a in t.axes)
            fill = 1 if t.name == "attention_mask" else 0
            out[t.name] = np.full(shape, fill, dtype=t.numpy_dtype)
        mask = out.get("attention_mask")
        if mask is not None and mask.ndim == 2 and mask.shape[0] > 1:
            # One padded row, so the trace goes through the padding-mask path, not an all-ones shortcut.
            mask[-1, mask.shape[1] // 2 :] = 0
        return out


def router_spec(num_tiers: int = 4) -> IOSpec:
    return IOSpec(
        model=ROUTER_MODEL,
        inputs=(
            TensorIO("input_ids", "INT64", (BATCH, SEQUENCE)),
            TensorIO("attention_mask", "INT64", (BATCH, SEQUENCE)),
            # [B, 1], not [B]: every tensor keeps a batch axis plus at least one dim, so Triton's
            # batching (dims without the batch axis) needs no reshape block.
            TensorIO("task_id", "INT64", (BATCH, 1)),
        ),
        outputs=(TensorIO("logits", "FP32", (BATCH, num_tiers)),),
    )


def t1_model_name(task: str) -> str:
    return f"t1_{task}"


def t1_spec(task: str, num_labels: int, *, token_level: bool) -> IOSpec:
    """T1 head of `task`: per-text logits [B, labels], or per-token logits [B, T, labels] for NER."""
    logits_axes = (BATCH, SEQUENCE, num_labels) if token_level else (BATCH, num_labels)
    return IOSpec(
        model=t1_model_name(task),
        inputs=(
            TensorIO("input_ids", "INT64", (BATCH, SEQUENCE)),
            TensorIO("attention_mask", "INT64", (BATCH, SEQUENCE)),
        ),
        outputs=(TensorIO("logits", "FP32", logits_axes),),
    )


def spec_for_model(model: torch.nn.Module, task: str | None = None) -> IOSpec:
    """The spec of a RouterNet or a T1 transformers model (its config knows its task and labels)."""
    from export.router_model import RouterNet

    if isinstance(model, RouterNet):
        return router_spec(model.num_tiers)
    config = model.config
    task = task or getattr(config, "routenlp_task", None)
    if not task:
        raise ValueError("cannot tell the T1 task of this model; pass task=")
    token_level = type(model).__name__.endswith("ForTokenClassification")
    return t1_spec(task, config.num_labels, token_level=token_level)


def model_metadata(model: torch.nn.Module) -> dict[str, str]:
    """What an ONNX consumer needs to read the outputs: labels in logit order, task / tier names."""
    from export.router_model import RouterNet

    if isinstance(model, RouterNet):
        return {"routenlp_model": ROUTER_MODEL, "router_args": json.dumps(model.args, sort_keys=True)}
    config = getattr(model, "config", None)
    if config is None:
        return {}
    out = {"labels": json.dumps([config.id2label[i] for i in range(config.num_labels)])}
    task = getattr(config, "routenlp_task", None)
    if task:
        out["routenlp_task"] = task
        out["routenlp_model"] = t1_model_name(task)
    return out


def session_metadata(session) -> dict[str, str]:
    """metadata_props of a loaded onnxruntime session (see model_metadata)."""
    return dict(session.get_modelmeta().custom_metadata_map)


class _ByName(torch.nn.Module):
    """Positional inputs in spec order -> model(**named) -> logits tensor (ModelOutput unwrapped)."""

    def __init__(self, model: torch.nn.Module, spec: IOSpec):
        super().__init__()
        self.model = model
        self.names = spec.input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.names, inputs)))
        return out.logits if hasattr(out, "logits") else out


def torch_outputs(model: torch.nn.Module, spec: IOSpec, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The model's logits for numpy inputs named as in `spec` (eval mode, no grad)."""
    model.eval()
    with torch.no_grad():
        args = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in spec.input_names]
        return _ByName(model, spec)(*args).numpy()


def export_onnx(
    model: torch.nn.Module,
    spec: IOSpec,
    path: str | Path,
    opset: int = 17,
    *,
    dynamo: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Export `model` to `path` with the names and dynamic axes of `spec`, then check the graph.

    The legacy TorchScript exporter (dynamo=False) is the default: well under a second for these
    models. dynamo=True uses torch.export + onnxscript (slower, the future default). The file's
    metadata_props hold `metadata` (default: model_metadata(model): task and labels of a T1 head,
    constructor args of a router), so an ONNX file alone says what its outputs mean.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    wrapper = _ByName(model, spec).eval()
    args = tuple(torch.from_numpy(a) for a in spec.dummy_inputs().values())
    kwargs: dict[str, Any] = dict(
        input_names=spec.input_names,
        output_names=spec.output_names,
        opset_version=opset,
        do_constant_folding=True,
    )
    with torch.no_grad():
        if dynamo:
            # The wrapper takes *inputs, i.e. one varargs argument holding every input's shapes.
            shapes = (tuple({i: torch.export.Dim.DYNAMIC for i, a in enumerate(t.axes) if isinstance(a, str)} for t in spec.inputs),)
            torch.onnx.export(wrapper, args, str(path), dynamo=True, dynamic_shapes=shapes, external_data=False, **kwargs)
        else:
            with warnings.catch_warnings():
                # Expected when tracing transformers' mask code (shape checks become constants);
                # parity_check on real, padded inputs of other shapes is the guard that matters.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                torch.onnx.export(wrapper, args, str(path), dynamo=False, dynamic_axes=spec.dynamic_axes, **kwargs)
    graph = onnx.load(str(path))
    for key, value in {**model_metadata(model), **dict(metadata or {})}.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    onnx.save(graph, str(path))
    onnx.checker.check_model(graph)
    got_in = [i.name for i in graph.graph.input]
    got_out = [o.name for o in graph.graph.output]
    if got_in != spec.input_names or got_out != spec.output_names:
        raise ParityError(f"{spec.model}: exported graph has inputs {got_in} / outputs {got_out}, spec says {spec.input_names} / {spec.output_names}")
    return path


def ort_session(onnx_path: str | Path, intra_op_threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def ort_outputs(session, spec: IOSpec, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    feed = {t.name: np.ascontiguousarray(inputs[t.name], dtype=t.numpy_dtype) for t in spec.inputs}
    return session.run(spec.output_names, feed)[0]


def parity_check(
    model: torch.nn.Module,
    onnx_path: str | Path,
    spec: IOSpec,
    sample_inputs: Mapping[str, np.ndarray],
    *,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Compare torch and ONNX Runtime on `sample_inputs` (real inputs, named as in `spec`).

    Returns {max_abs_diff, argmax_agreement, n}: argmax over the last axis, over the positions the
    attention mask keeps for per-token outputs. Raises ParityError on a name, dtype or shape
    mismatch, or when max_abs_diff > atol.
    """
    session = ort_session(onnx_path)
    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    if names_in != spec.input_names or names_out != spec.output_names:
        raise ParityError(f"{spec.model}: ONNX inputs {names_in} / outputs {names_out} do not match the spec")
    expected = torch_outputs(model, spec, sample_inputs)
    got = ort_outputs(session, spec, sample_inputs)
    if got.shape != expected.shape or got.dtype != spec.outputs[0].numpy_dtype:
        raise ParityError(f"{spec.model}: ONNX output {got.dtype}{got.shape} vs torch {expected.dtype}{expected.shape}")
    axes = spec.outputs[0].axes
    if got.ndim != len(axes) or any(isinstance(a, int) and a != n for a, n in zip(axes, got.shape)):
        raise ParityError(f"{spec.model}: output shape {got.shape} does not fit the spec's axes {axes}")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    agree = np.argmax(got, axis=-1) == np.argmax(expected, axis=-1)
    if got.ndim == 3 and "attention_mask" in sample_inputs:
        agree = agree[np.asarray(sample_inputs["attention_mask"]).astype(bool)]
    report = {"max_abs_diff": diff, "argmax_agreement": float(agree.mean()) if agree.size else 1.0, "n": int(got.shape[0])}
    if not np.isfinite(diff) or diff > atol:
        raise ParityError(f"{spec.model}: max |onnx - torch| = {diff:.3g} > {atol:g} on {report['n']} inputs")
    return report


def _take_batch(spec: IOSpec, sample_inputs: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The first `batch` rows (repeated if there are fewer), cut to the longest kept sequence."""
    n = len(sample_inputs[spec.input_names[0]])
    rows = np.arange(batch) % n
    out = {name: np.ascontiguousarray(np.asarray(sample_inputs[name])[rows]) for name in spec.input_names}
    if "attention_mask" in out:
        width = max(1, int(out["attention_mask"].sum(axis=1).max()))
        for t in spec.inputs:
            if SEQUENCE in t.axes:
                out[t.name] = np.ascontiguousarray(out[t.name][:, :width])
    return out


def _median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def latency_table(
    model: torch.nn.Module,
    onnx_path: str | Path,
    sample_inputs: Mapping[str, np.ndarray],
    batch_sizes: Sequence[int] = (1, 8),
    repeats: int = 30,
    *,
    spec: IOSpec | None = None,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """Median latency (ms) of torch (eval, no_grad) and ONNX Runtime (default intra-op threads).

    Rows {model, batch, seq_len, torch_ms, ort_ms, speedup}; each batch is the first rows of the
    real `sample_inputs`, trimmed to its longest sequence.
    """
    spec = spec or spec_for_model(model)
    session = ort_session(onnx_path)
    model.eval()
    rows = []
    for batch in batch_sizes:
        inputs = _take_batch(spec, sample_inputs, batch)
        tensors = [torch.from_numpy(inputs[n]) for n in spec.input_names]
        wrapper = _ByName(model, spec)

        def run_torch() -> None:
            with torch.no_grad():
                wrapper(*tensors)

        feed = {n: inputs[n] for n in spec.input_names}
        torch_ms = _median_ms(run_torch, repeats)
        ort_ms = _median_ms(lambda: session.run(spec.output_names, feed), repeats)
        rows.append(
            {
                "model": name or spec.model,
                "batch": batch,
                "seq_len": int(inputs[spec.input_names[0]].shape[1]) if inputs[spec.input_names[0]].ndim > 1 else 1,
                "torch_ms": round(torch_ms, 3),
                "ort_ms": round(ort_ms, 3),
                "speedup": round(torch_ms / ort_ms, 2) if ort_ms > 0 else None,
            }
        )
    return rows
