"""Causal-LM pretraining of a decoder tier on the unlabelled in-domain corpus
(routenlp/data/corpus.py) before its task tuning: the pretraining compute a pricier tier of a real
model family has had. Documents are tokenized, joined with EOS and cut into full blocks (no padding),
so every step trains on max_len tokens per row."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from export.training import optimizer_step, run_stats, warmup_linear

MAX_GRAD_NORM = 1.0
WARMUP_FRACTION = 0.06


def corpus_blocks(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], block_len: int, seed: int) -> list[list[int]]:
    """The texts in a seeded random order, tokenized, each ended by EOS, concatenated and cut into
    blocks of block_len tokens (the last partial block dropped), in a seeded random order."""
    order = list(range(len(texts)))
    random.Random(f"{seed}:documents").shuffle(order)
    stream: list[int] = []
    for ids in tokenizer([texts[i] for i in order], add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    blocks = [stream[i : i + block_len] for i in range(0, len(stream) - block_len + 1, block_len)]
    random.Random(f"{seed}:blocks").shuffle(blocks)
    return blocks


def pretrain_decoder(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    tokens: int,
    block_len: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.01,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `model` in place on next-token prediction over at most `tokens` corpus tokens (one pass
    at most: a bigger budget than the corpus is capped, not repeated); returns training stats."""
    torch.manual_seed(seed)
    blocks = corpus_blocks(tokenizer, texts, block_len, seed)
    available = len(blocks) * block_len
    blocks = blocks[: max(1, tokens // block_len)]
    if not blocks:
        raise ValueError(f"the pretraining corpus holds fewer than {block_len} tokens")
    steps = -(-len(blocks) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(steps, WARMUP_FRACTION))
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(total=steps, desc="pretrain decoder", unit="step", disable=not progress)
    for start in range(0, len(blocks), batch_size):
        input_ids = torch.tensor(blocks[start : start + batch_size], dtype=torch.long)
        loss = model(input_ids=input_ids, labels=input_ids).loss
        optimizer_step(model, loss, optimizer, scheduler, MAX_GRAD_NORM)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    seconds = time.perf_counter() - started
    seen = len(blocks) * block_len
    return run_stats(
        examples=len(blocks), epochs=1, steps=steps, batch_size=batch_size, lr=lr, max_len=block_len, seed=seed,
        epoch_losses=[sum(losses[-50:]) / len(losses[-50:])], seconds=seconds, corpus_tokens=available, tokens_seen=seen,
        first_loss=round(sum(losses[:20]) / len(losses[:20]), 5), tokens_per_second=round(seen / seconds, 1) if seconds > 0 else None,
    )
