"""Greedy batch generation with per-token logprobs through transformers, in process.

Labelling the router runs every tier over the training pool. For the small local tiers this is
far cheaper than starting one vLLM engine per tier (45-90 s each on CPU), and greedy float32
decoding gives the same tokens; serving still goes through vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from routenlp_core.answers import Generation


def _truncate_prompt(ids: list[int], max_prompt_tokens: int, bos_id: int | None) -> list[int]:
    # Same rule as training (export/train_decoder.encode_pair): keep <s> and the prompt's tail,
    # which holds the "answer:" cue.
    if len(ids) <= max_prompt_tokens:
        return ids
    head = ids[:1] if ids and ids[0] == bos_id else []
    return head + ids[len(ids) - (max_prompt_tokens - len(head)) :]


@torch.no_grad()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    max_prompt_tokens: int,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "generate",
    groups: Sequence[str] | None = None,
) -> list[Generation]:
    """Greedy answers for `prompts`. `groups` (e.g. the task of each prompt) keeps prompts with
    similar answer lengths in one batch: a batch decodes until its longest answer ends, so one
    summary among label answers would hold the whole batch for max_new_tokens steps."""
    model.eval()
    # A checkpoint brought by a site may have no pad token; its EOS pads as well (left padding,
    # masked out).
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # The MoE load-balancing loss is for training; during generation it breaks on padded batches.
    if getattr(model.config, "output_router_logits", False):
        model.config.output_router_logits = False
    encoded = [
        _truncate_prompt(tokenizer(p, add_special_tokens=True)["input_ids"], max_prompt_tokens, tokenizer.bos_token_id)
        for p in prompts
    ]
    # Sorting by (group, length) keeps padding and decode steps small; results go back in order.
    group_of = list(groups) if groups is not None else [""] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: (group_of[i], len(encoded[i])))
    results: list[Generation | None] = [None] * len(encoded)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        width = max(len(encoded[i]) for i in batch)
        # Left padding: every row's next token is generated at the same position.
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids = encoded[index]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        logprobs = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        for row, index in enumerate(batch):
            new_ids = out.sequences[row, width:].tolist()
            steps = []
            for step, token_id in enumerate(new_ids):
                steps.append(token_id)
                if token_id == tokenizer.eos_token_id:
                    break
            token_logprobs = [float(lp) for lp in logprobs[row, : len(steps)]]
            finished = bool(steps) and steps[-1] == tokenizer.eos_token_id
            text = tokenizer.decode(steps[:-1] if finished else steps, skip_special_tokens=True)
            results[index] = Generation(
                text, token_logprobs, completion_tokens=len(steps), token_ids=steps,
                finish_reason="stop" if finished else "length",
            )
    return results  # type: ignore[return-value]
