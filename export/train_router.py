"""Train RouterNet on all-pairs tier quality: every training query scored on every tier.

Labels come from the data: per tier, does its answer meet the example's bar (example_bars: the
task's bar, or T4's own quality less a tolerance on generation tasks); the loss is the composite
of export/router_loss.py with the portfolio's weights unless overridden (ablations pass
cost_weight=0 or quality_weight=0). Accuracy is agreement of the served decision at gamma 0.5
(the cheapest tier predicted to pass) with the oracle tier (the cheapest tier that passes). A seeded 10% of the queries is held out for early stopping on
the held-out loss (patience 3); the best epoch's weights are restored.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from export.router_loss import example_bars, oracle_labels, router_loss
from export.router_model import RouterNet, router_logits
from export.training import length_bucketed_batches, optimizer_step, warmup_linear
from routenlp.portfolio import TIER_ORDER, RouterSettings
from routenlp_core.encoder_inputs import encode_texts, pad_batch

DEFAULT_LR = 5e-4
MAX_GRAD_NORM = 1.0


def tier_price_vector(tier_prices: Sequence[float] | Mapping[str, Any]) -> np.ndarray:
    """Prices cheapest-tier first, from a list or a {tier name: Tier or price} mapping."""
    if isinstance(tier_prices, Mapping):
        values = [tier_prices[name] for name in TIER_ORDER]
        return np.asarray([getattr(v, "price_per_1k_tokens", v) for v in values], dtype=np.float32)
    return np.asarray(list(tier_prices), dtype=np.float32)


def held_out_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): a seeded `val_fraction` of n, at least one, never all."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_router(
    records: Sequence[Mapping[str, Any]],
    tier_quality,
    bars,
    tokenizer: PreTrainedTokenizerBase,
    settings: RouterSettings,
    tier_prices: Sequence[float] | Mapping[str, Any],
    *,
    epochs: int,
    max_len: int,
    batch_size: int = 64,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    progress: bool = True,
    cost_weight: float | None = None,
    quality_weight: float | None = None,
    val_fraction: float = 0.1,
    patience: int = 3,
    weight_decay: float = 0.01,
) -> tuple[RouterNet, dict[str, Any]]:
    """Train a router on records {text, task} with per-tier quality [N, K] and task bars {task: bar}.

    Returns the model with the best held-out epoch's weights (eval mode) and the training stats.
    """
    quality = np.asarray(tier_quality, dtype=np.float32)
    bars = example_bars(records, quality, bars)
    prices = tier_price_vector(tier_prices)
    n = len(records)
    if n < 2:
        raise ValueError("need at least 2 records (one is held out)")
    if quality.shape != (n, len(prices)):
        raise ValueError(f"tier_quality must be [{n}, {len(prices)}]; got {quality.shape}")
    cost_weight = settings.cost_weight if cost_weight is None else float(cost_weight)
    quality_weight = settings.quality_weight if quality_weight is None else float(quality_weight)

    torch.manual_seed(seed)
    model = RouterNet.from_settings(settings, tokenizer)
    if model.num_tiers != len(prices):
        raise ValueError(f"{len(prices)} tier prices for a router over {model.num_tiers} tiers")
    labels = oracle_labels(torch.from_numpy(quality), torch.from_numpy(bars)).numpy()
    ids = encode_texts(tokenizer, [str(r["text"]) for r in records], max_len)
    task_ids = np.asarray(model.task_ids([r["task"] for r in records]), dtype=np.int64)
    train_idx, val_idx = held_out_split(n, val_fraction, seed)
    cost = torch.from_numpy(prices)
    servable = servable_mask(records, len(prices))

    def batch_tensors(rows: Sequence[int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        input_ids, attention = pad_batch([ids[i] for i in rows], tokenizer.pad_token_id)
        inputs = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "task_id": torch.from_numpy(task_ids[list(rows)]),
        }
        targets = {
            "oracle_tier": torch.from_numpy(labels[list(rows)]),
            "servable": torch.from_numpy(servable[list(rows)]),
            "tier_quality": torch.from_numpy(quality[list(rows)]),
            "bar": torch.from_numpy(bars[list(rows)]),
        }
        return inputs, targets

    def loss_of(inputs, targets):
        logits = model(**inputs)
        total, parts = router_loss(logits, cost, targets["tier_quality"], targets["bar"], cost_weight, quality_weight)
        return logits, total, parts

    def evaluate() -> tuple[float, float]:
        model.eval()
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(val_idx), 256):
                rows = val_idx[start : start + 256].tolist()
                inputs, targets = batch_tensors(rows)
                logits, total, _ = loss_of(inputs, targets)
                loss_sum += total.item() * len(rows)
                picks = confident_picks(logits.sigmoid().numpy(), targets["servable"].numpy())
                correct += int((picks == targets["oracle_tier"].numpy()).sum())
        model.train()
        return loss_sum / len(val_idx), correct / len(val_idx)

    shuffler = torch.Generator().manual_seed(seed)
    lengths = [len(ids[i]) for i in train_idx]
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(steps_per_epoch * epochs))
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state, waited = math.inf, 0, None, 0
    started = time.perf_counter()
    model.train()
    bar = tqdm(total=steps_per_epoch * epochs, desc="train router", unit="step", disable=not progress)
    for epoch in range(1, epochs + 1):
        sums = {"total": 0.0, "route": 0.0, "cost": 0.0, "quality": 0.0}
        for batch_rows in length_bucketed_batches(lengths, batch_size, shuffler):
            inputs, targets = batch_tensors([int(train_idx[i]) for i in batch_rows])
            _, total, parts = loss_of(inputs, targets)
            optimizer_step(model, total, optimizer, scheduler, MAX_GRAD_NORM)
            sums["total"] += total.item()
            for key, value in parts.items():
                sums[key] += value.item()
            bar.update(1)
            bar.set_postfix(loss=f"{total.item():.3f}")
        val_loss, val_acc = evaluate()
        history.append({"epoch": epoch, **{f"train_{k}": round(v / steps_per_epoch, 5) for k, v in sums.items()},
                        "val_loss": round(val_loss, 5), "val_accuracy": round(val_acc, 4)})
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch, waited = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if waited >= patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    stats = {
        "examples": n,
        "train_examples": int(len(train_idx)),
        "val_examples": int(len(val_idx)),
        "oracle_label_counts": {name: int((labels == k).sum()) for k, name in enumerate(model.tier_names)},
        "cost_weight": cost_weight,
        "quality_weight": quality_weight,
        "tier_prices": prices.tolist(),
        "epochs": epochs,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "stopped_early": len(history) < epochs,
        "best_val_loss": round(best_loss, 5),
        "best_val_accuracy": next(h["val_accuracy"] for h in history if h["epoch"] == best_epoch) if best_epoch else None,
        "history": history,
        "batch_size": batch_size,
        "lr": lr,
        "max_len": max_len,
        "seed": seed,
        "train_seconds": round(time.perf_counter() - started, 2),
        "threads": torch.get_num_threads(),
    }
    return model, stats


def router_accuracy(
    model: RouterNet,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Mapping[str, Any]],
    tier_quality,
    bars: Mapping[str, float],
    max_len: int,
    gamma: float = 0.5,
) -> float:
    """Share of records whose served pick (the cheapest servable tier predicted to pass at
    `gamma`) equals the oracle tier (the cheapest tier that passes, else the best one)."""
    if not records:
        raise ValueError("no records to score")
    quality = np.asarray(tier_quality, dtype=np.float32)
    labels = oracle_labels(torch.as_tensor(quality), torch.as_tensor(example_bars(records, quality, bars))).numpy()
    probs = 1.0 / (1.0 + np.exp(-router_logits(model, tokenizer, records, max_len)))
    predicted = confident_picks(probs, servable_mask(records, quality.shape[1]), gamma)
    return float((predicted == labels).mean())


def servable_mask(records: Sequence[Mapping[str, Any]], tiers: int) -> np.ndarray:
    """[N, K] bool: T1 serves structured tasks only."""
    from routenlp_core.tasks import get_task

    mask = np.ones((len(records), tiers), dtype=bool)
    for i, record in enumerate(records):
        mask[i, 0] = get_task(record["task"]).structured
    return mask


def confident_picks(probs: np.ndarray, servable: np.ndarray, gamma: float = 0.5) -> np.ndarray:
    """[N] tier index the service would pick from [N, K] pass probabilities (the same rule)."""
    from bls_router.service import cheapest_confident_tier

    names = TIER_ORDER[: probs.shape[1]]
    return np.array([
        names.index(cheapest_confident_tier(dict(zip(names, row)), [t for t, ok in zip(names, mask) if ok], gamma))
        for row, mask in zip(probs, servable)
    ], dtype=np.int64)
