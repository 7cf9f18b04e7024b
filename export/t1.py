"""T1: one small DistilBERT per structured task, trained from scratch, served through ONNX Runtime.

cs_intent / legal_clause / legal_risk get DistilBertForSequenceClassification (reads <s> = [CLS]),
fin_ner gets DistilBertForTokenClassification over IO tags. Each model's config carries its task
(`routenlp_task`) and its labels (id2label / label2id from routenlp.data.task_labels), so a saved
checkpoint or an ONNX export says what it predicts.

The torch-free encoding and decoding (NER word alignment, `predict_with`) lives in
routenlp_core/t1_codec.py, so the routing BLS runs exactly the same code without torch; its names
are re-exported here.

Prediction is written once (`predict_with`) over a `logits_fn(input_ids, attention_mask) ->
np.ndarray`, so the torch model, an onnxruntime session and a Triton BLS call share every line of
pre- and post-processing (`predict_t1` accepts the first two).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from export.encoder import (
    EncoderArch,
    as_arch,
    build_encoder_config,
)
from export.training import length_bucketed_batches, optimizer_step, run_stats, warmup_linear
from routenlp.data import task_labels
from routenlp.metrics import corpus_score, metric_name, secondary_scores
from routenlp_core.encoder_inputs import encode_texts, pad_batch
from routenlp_core.t1_codec import (  # noqa: F401  (re-exported: export.t1 is their historical home)
    IGNORE_INDEX,
    OUTSIDE,
    LogitsFn,
    encode_words,
    first_piece_labels,
    is_token_task,
    predict_with,
    record_words,
    softmax,
)
from routenlp_core.tasks import TASK_NAMES, get_task

T1_TASKS: tuple[str, ...] = tuple(name for name in TASK_NAMES if get_task(name).structured)
META_FILE = "routenlp_t1.json"
DEFAULT_LR = 1e-3
MAX_GRAD_NORM = 1.0


def labels_for(task: str) -> tuple[str, ...]:
    if not get_task(task).structured:
        raise ValueError(f"task {task!r} is a generation task and has no T1 head; T1 tasks: {', '.join(T1_TASKS)}")
    labels = task_labels(task)
    if not labels:
        raise ValueError(f"no label set for {task!r}: build the benchmark first (routenlp data build)")
    return labels


def build_t1(task: str, tokenizer: PreTrainedTokenizerBase, arch: EncoderArch | Mapping[str, Any]) -> PreTrainedModel:
    """A randomly initialised T1 head for `task` (call torch.manual_seed first to fix it)."""
    labels = labels_for(task)
    config = build_encoder_config(
        arch,
        tokenizer,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    config.routenlp_task = task
    cls = DistilBertForTokenClassification if is_token_task(task) else DistilBertForSequenceClassification
    return cls(config).to(torch.float32)


# ---------------------------------------------------------------- encoding


def encode_examples(
    task: str, records: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase, max_len: int, label2id: Mapping[str, int]
) -> list[tuple[list[int], Any]]:
    """(ids, label) per record: a label id, or per-piece label ids for NER."""
    if is_token_task(task):
        out = []
        for record in records:
            words = record_words(record)
            tags = list(record["target"])
            if len(tags) != len(words):
                raise ValueError(f"{record.get('id')}: {len(words)} words but {len(tags)} tags")
            ids, word_of = encode_words(tokenizer, words, max_len)
            out.append((ids, first_piece_labels(word_of, [_label_id(label2id, t, record) for t in tags])))
        return out
    ids = encode_texts(tokenizer, [str(r["text"]) for r in records], max_len)
    return [(seq, _label_id(label2id, r["target"], r)) for seq, r in zip(ids, records)]


def _label_id(label2id: Mapping[str, int], label: str, record: Mapping[str, Any]) -> int:
    try:
        return label2id[label]
    except KeyError:
        raise ValueError(f"{record.get('id')}: label {label!r} is not one of the model's {len(label2id)} labels") from None


def _collate(examples: Sequence[tuple[list[int], Any]], pad_id: int, token_level: bool) -> dict[str, torch.Tensor]:
    input_ids, attention = pad_batch([ids for ids, _ in examples], pad_id)
    if token_level:
        labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)
        for row, (_, labs) in enumerate(examples):
            labels[row, : len(labs)] = labs
    else:
        labels = np.array([lab for _, lab in examples], dtype=np.int64)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "labels": torch.from_numpy(labels),
    }


# ---------------------------------------------------------------- training


def train_t1(
    task: str,
    train_records: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    arch: EncoderArch | Mapping[str, Any],
    *,
    epochs: int,
    max_len: int,
    batch_size: int = 32,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    weight_decay: float = 0.01,
    progress: bool = True,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Train a T1 head for `task` from scratch (AdamW, warm-up + linear decay, clip 1.0).

    Same seed, same data -> same model (initialisation and shuffling are both seeded).
    """
    arch = as_arch(arch)
    torch.manual_seed(seed)
    model = build_t1(task, tokenizer, arch)
    stats = fit_t1(model, task, train_records, tokenizer, epochs=epochs, max_len=max_len, batch_size=batch_size, lr=lr, seed=seed, weight_decay=weight_decay, progress=progress)
    stats["arch"] = arch.to_dict()
    return model, stats


def fit_t1(
    model: PreTrainedModel,
    task: str,
    train_records: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    epochs: int,
    max_len: int,
    batch_size: int = 32,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    weight_decay: float = 0.01,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `model` (a new head, or a trained one being fine-tuned, e.g. by coopt) in place on
    records whose `target` is the label (tag list for NER); returns the training stats."""
    if not train_records:
        raise ValueError(f"no training records for {task}")
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    token_level = is_token_task(task)
    examples = encode_examples(task, train_records, tokenizer, max_len, model.config.label2id)
    shuffler = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total_steps = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(total_steps))

    model.train()
    epoch_losses: list[float] = []
    tokens_seen = 0
    started = time.perf_counter()
    bar = tqdm(total=total_steps, desc=f"train t1 {task}", unit="step", disable=not progress)
    lengths = [len(ids) for ids, _ in examples]
    for _ in range(epochs):
        loss_sum = 0.0
        for rows in length_bucketed_batches(lengths, batch_size, shuffler):
            batch = _collate([examples[i] for i in rows], tokenizer.pad_token_id, token_level)
            loss = model(**batch).loss
            optimizer_step(model, loss, optimizer, scheduler, MAX_GRAD_NORM)
            loss_sum += loss.item()
            tokens_seen += int(batch["attention_mask"].sum())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        epoch_losses.append(loss_sum / steps_per_epoch)
    bar.close()
    model.eval()
    seconds = time.perf_counter() - started
    return run_stats(
        examples=len(examples), epochs=epochs, steps=total_steps, batch_size=batch_size, lr=lr, max_len=max_len,
        seed=seed, epoch_losses=epoch_losses, seconds=seconds,
        task=task, parameters=sum(p.numel() for p in model.parameters()), tokens_seen=tokens_seen,
        examples_per_second=round(len(examples) * epochs / seconds, 1) if seconds > 0 else None,
    )


# ---------------------------------------------------------------- prediction


def torch_logits_fn(model: torch.nn.Module) -> LogitsFn:
    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask))
        return out.logits.numpy()

    model.eval()
    return run


def ort_logits_fn(session, input_names: Sequence[str] = ("input_ids", "attention_mask"), output_name: str = "logits") -> LogitsFn:
    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = dict(zip(input_names, (input_ids, attention_mask)))
        return session.run([output_name], feed)[0]

    return run


def logits_fn_for(model_or_session: Any) -> LogitsFn:
    """A logits function over a torch module or an onnxruntime InferenceSession."""
    if isinstance(model_or_session, torch.nn.Module):
        return torch_logits_fn(model_or_session)
    if hasattr(model_or_session, "run") and hasattr(model_or_session, "get_inputs"):
        names = [i.name for i in model_or_session.get_inputs()]
        if names[:2] != ["input_ids", "attention_mask"]:
            raise ValueError(f"ONNX session inputs {names} are not the T1 spec's (input_ids, attention_mask)")
        return ort_logits_fn(model_or_session)
    if callable(model_or_session):
        return model_or_session
    raise TypeError(f"expected a torch module, an onnxruntime session or a logits function, got {type(model_or_session).__name__}")


def model_labels(model_or_session: Any, task: str) -> list[str]:
    """Labels in logit order: the model config's, the ONNX file's metadata, else the task's set."""
    config = getattr(model_or_session, "config", None)
    if config is not None and getattr(config, "id2label", None):
        return [config.id2label[i] for i in range(config.num_labels)]
    if hasattr(model_or_session, "get_modelmeta"):
        meta = model_or_session.get_modelmeta().custom_metadata_map
        if meta.get("routenlp_task") not in (None, task):
            raise ValueError(f"this ONNX model is the T1 head of {meta['routenlp_task']!r}, not {task!r}")
        if "labels" in meta:
            return list(json.loads(meta["labels"]))
    return list(labels_for(task))


def predict_t1(
    model_or_session: Any,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    records: Sequence[Mapping[str, Any]],
    max_len: int,
    batch_size: int = 64,
    labels: Sequence[str] | None = None,
) -> list[tuple[Any, float]]:
    """predict_with() over a torch T1 model or an onnxruntime session of its ONNX export."""
    labels = labels or model_labels(model_or_session, task)
    return predict_with(logits_fn_for(model_or_session), tokenizer, task, labels, records, max_len, batch_size)


def evaluate_t1(model_or_session: Any, tokenizer: PreTrainedTokenizerBase, task: str, records: Sequence[Mapping[str, Any]], max_len: int) -> dict[str, Any]:
    """The task's official corpus metric of T1 on `records` (+ secondary numbers, mean uncertainty)."""
    started = time.perf_counter()
    outputs = predict_t1(model_or_session, tokenizer, task, records, max_len)
    predictions = [p for p, _ in outputs]
    references = [r["target"] for r in records]
    return {
        "metric": metric_name(task),
        "score": round(corpus_score(task, predictions, references), 4),
        "secondary": {k: round(v, 4) for k, v in secondary_scores(task, predictions, references).items()},
        "n": len(records),
        "mean_uncertainty": round(float(np.mean([u for _, u in outputs])), 4),
        "predict_seconds": round(time.perf_counter() - started, 2),
    }


# ---------------------------------------------------------------- checkpoints and the pipeline entry


def save_t1(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path, meta: Mapping[str, Any]) -> Path:
    """save_pretrained (config holds task + labels) + tokenizer + routenlp_t1.json (stats, max_len)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    record = {"task": model.config.routenlp_task, "architecture": type(model).__name__, **dict(meta)}
    (out_dir / META_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return out_dir


def load_t1(model_dir: Path) -> tuple[PreTrainedModel, dict[str, Any]]:
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    cls = DistilBertForTokenClassification if is_token_task(meta["task"]) else DistilBertForSequenceClassification
    model = cls.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    return model, meta
