"""Fine-tune (or train from scratch) a decoder tier on prompt -> answer pairs.

The loss covers only the answer tokens and the closing </s>: the tiers are asked to answer
prompts, not to model them, and learning where to stop is what makes vLLM's greedy output end
cleanly. Model-agnostic: any transformers causal LM with a fast tokenizer works.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from export.training import bucketed_batch_count, length_bucketed_batches, optimizer_step, run_stats, warmup_linear

IGNORE_INDEX = -100  # label value torch's cross-entropy skips
WARMUP_FRACTION = 0.05
MAX_GRAD_NORM = 1.0


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, max_len: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels for one example, at most `max_len` long.

    The prompt is encoded exactly as vLLM encodes it (with special tokens, i.e. a leading <s>) and
    the answer separately, so the model is trained on the very token boundary it generates from.
    When too long, the answer keeps up to half the budget and the prompt loses its *start*
    (the end holds the instruction cue, e.g. "answer:", which the answer depends on most).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) + len(answer_ids) > max_len:
        answer_ids = answer_ids[: max(1, max_len // 2)]
        keep = max_len - len(answer_ids)
        has_bos = bool(prompt_ids) and prompt_ids[0] == tokenizer.bos_token_id
        head = prompt_ids[:1] if has_bos and keep > 1 else []
        tail = prompt_ids[len(head) :][-(keep - len(head)) :] if keep > len(head) else []
        prompt_ids = head + tail
    ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    return ids, labels


def _collate(
    examples: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def train_decoder(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    max_len: int,
    seed: int,
    weight_decay: float = 0.01,
    progress: bool = True,
    bucket_pool_batches: int = 50,
) -> dict[str, Any]:
    """Train `model` in place with AdamW on (prompt, answer) pairs; returns training stats.

    Reproducible for a given seed (initialise the model after torch.manual_seed too). Thread
    count is left to torch's default, i.e. all cores.
    """
    if not pairs:
        raise ValueError("no training pairs")
    if max_len < 2:
        raise ValueError("max_len must leave room for a prompt token and an answer token")
    torch.manual_seed(seed)
    shuffler = torch.Generator().manual_seed(seed)
    examples = [encode_pair(tokenizer, prompt, answer, max_len) for prompt, answer in pairs]
    # Batches of similar length, sorted within pools of `bucket_pool_batches` batches (1 = plain
    # shuffling). Big pools save padding but make batches single-task on small mixed sets.
    steps_per_epoch = bucketed_batch_count(len(examples), batch_size, bucket_pool_batches)
    total_steps = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    # Warm-up avoids the large first AdamW steps that destabilise a randomly initialised model;
    # decaying to zero lets short CPU runs settle instead of ending on a noisy step.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(total_steps, WARMUP_FRACTION))

    model.train()
    epoch_losses: list[float] = []
    answer_tokens = 0
    seen_tokens = 0
    started = time.perf_counter()
    bar = tqdm(total=total_steps, desc="train decoder", unit="step", disable=not progress)
    for _ in range(epochs):
        loss_sum, loss_batches = 0.0, 0
        # Similar lengths per batch: short classification answers no longer pad to the longest
        # summary in the batch (measured ~2x fewer tokens computed on the default pool).
        for rows in length_bucketed_batches([len(ids) for ids, _ in examples], batch_size, shuffler, bucket_pool_batches):
            batch = _collate([examples[i] for i in rows], tokenizer.pad_token_id)
            # For Mixtral configs with output_router_logits, .loss already includes the
            # load-balancing term.
            loss = model(**batch).loss
            optimizer_step(model, loss, optimizer, scheduler, MAX_GRAD_NORM)
            loss_sum += loss.item()
            loss_batches += 1
            answer_tokens += int((batch["labels"] != IGNORE_INDEX).sum())
            seen_tokens += int(batch["attention_mask"].sum())
            bar.update(1)
            # refresh=False: redraw at tqdm's own pace, not every step (keeps CI logs short)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        epoch_losses.append(loss_sum / loss_batches)
    bar.close()
    model.eval()
    seconds = time.perf_counter() - started
    return run_stats(
        examples=len(examples), epochs=epochs, steps=total_steps, batch_size=batch_size, lr=lr, max_len=max_len, bucket_pool_batches=bucket_pool_batches,
        seed=seed, epoch_losses=epoch_losses, seconds=seconds,
        tokens_seen=seen_tokens, answer_tokens=answer_tokens,
        tokens_per_second=round(seen_tokens / seconds, 1) if seconds > 0 else None,
    )
