"""Pieces every from-scratch training loop here shares (T1 heads, router, decoder tiers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def warmup_linear(total_steps: int, warmup_fraction: float = 0.06):
    """LambdaLR factor: linear warm-up, then linear decay to zero. Warm-up avoids the large first
    AdamW steps that destabilise a random model; decaying to zero lets short CPU runs settle."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def optimizer_step(model: torch.nn.Module, loss: torch.Tensor, optimizer, scheduler, max_grad_norm: float) -> None:
    """One AdamW step with gradient clipping and the schedule advanced."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()


def run_stats(*, examples: int, epochs: int, steps: int, batch_size: int, lr: float, max_len: int, seed: int, epoch_losses: list[float], seconds: float, **extra: Any) -> dict[str, Any]:
    """The training record saved beside every checkpoint (self-describing artefacts)."""
    return {
        "examples": examples,
        "epochs": epochs,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "max_len": max_len,
        "seed": seed,
        "epoch_losses": [round(x, 5) for x in epoch_losses],
        "final_loss": round(epoch_losses[-1], 5),
        "train_seconds": round(seconds, 2),
        "threads": torch.get_num_threads(),
        **extra,
    }


def length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, generator, pool_batches: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar-length examples (much less padding than plain shuffling).

    Shuffle with the seeded torch `generator`, sort each pool of `pool_batches` batches by length,
    cut it into batches and shuffle the batch order: still random, deterministic per seed.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    pool = batch_size * pool_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def bucketed_batch_count(examples: int, batch_size: int, pool_batches: int = 50) -> int:
    """How many batches length_bucketed_batches yields (for the schedule's total step count)."""
    pool = batch_size * pool_batches
    full, rest = divmod(examples, pool)
    return full * pool_batches + -(-rest // batch_size)
