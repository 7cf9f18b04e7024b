"""Run every tier over a pool of benchmark records and score each answer: the all-pairs evaluation
that gives the router its labels, the quality table its numbers and calibration its uncertainties.

One row per (record, tier): prediction, raw answer text, uncertainty u, tokens billed, quality.
u = mean(1 - p(token)) for decoders, 1 - max prob for classifiers (paper 3.3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from routenlp.metrics import example_score
from routenlp_core.answers import format_target, parse_output, prompt_text
from routenlp_core.tasks import get_task
from routenlp_core.uncertainty import generation_uncertainty


@dataclass(frozen=True)
class TierAnswer:
    id: str
    task: str
    tier: str
    prediction: Any
    raw: str
    u: float
    tokens: int
    quality: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def label_decoder(tier: str, model, tokenizer, records: Sequence[Mapping], *, max_new_tokens: int, max_prompt_tokens: int, progress: bool = True) -> list[TierAnswer]:
    from export.hf_generate import generate_greedy

    generations = generate_greedy(
        model, tokenizer, [prompt_text(r) for r in records],
        max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens, progress=progress, desc=f"label {tier}",
        groups=[r["task"] for r in records],
    )
    answers = []
    for record, gen in zip(records, generations):
        prediction = parse_output(record["task"], gen.text, record)
        prompt_tokens = min(len(tokenizer(prompt_text(record))["input_ids"]), max_prompt_tokens)
        answers.append(
            TierAnswer(
                record["id"], record["task"], tier, prediction, gen.text,
                round(generation_uncertainty(gen.token_logprobs), 6), prompt_tokens + len(gen.token_ids),
                round(example_score(record["task"], prediction, record["target"]), 6),
            )
        )
    return answers


def label_t1(task: str, model, tokenizer, records: Sequence[Mapping], *, max_len: int) -> list[TierAnswer]:
    from export.t1 import predict_t1

    outputs = predict_t1(model, tokenizer, task, records, max_len)
    answers = []
    for record, (prediction, u) in zip(records, outputs):
        tokens = min(len(tokenizer(record["text"])["input_ids"]), max_len)
        raw = format_target({**record, "target": prediction}) if get_task(task).kind == "ner" else str(prediction)
        answers.append(
            TierAnswer(
                record["id"], task, "t1", prediction, raw, round(float(u), 6), tokens,
                round(example_score(task, prediction, record["target"]), 6),
            )
        )
    return answers


def group_by_record(answers: Sequence[TierAnswer]) -> dict[str, dict[str, TierAnswer]]:
    table: dict[str, dict[str, TierAnswer]] = {}
    for answer in answers:
        table.setdefault(answer.id, {})[answer.tier] = answer
    return table
