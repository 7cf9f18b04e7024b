"""A confirm split: raw records no build step saw, answered by every tier of a build.

Nothing is fitted or chosen on it (bars, gamma, lambda, thresholds and peers' knobs all come from
the calibration and router pools): it only confirms what dev reports. Records are drawn per task
from the raw data the benchmark was built from (`routenlp.data.load_raw`), minus every record of
the benchmark's train / calibration / dev splits by id and by text (so a duplicate of a training
text cannot leak in), stratified by label with a seed (routenlp.data.sampling).

Caveat: the benchmark's splits keep documents whole, but its train split is capped, so a confirm
record of legal_clause / legal_risk / fin_ner may come from a document some training records came
from (never the same text).

`python -m clients.confirm_eval` draws the split once into benchmark/confirm.jsonl (committed), has
every tier answer it once (answers/confirm.jsonl under the build) and scores every system on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CONFIRM_POOL = "confirm"
CONFIRM_SEED = 2026


def _normalised(text: str) -> str:
    return " ".join(str(text).lower().split())


def confirm_records(raw: Path, per_task: int, seed: int = CONFIRM_SEED) -> list[dict[str, Any]]:
    """Per task up to `per_task` unseen raw records, stratified by label, seeded."""
    from routenlp.data import SPLITS, load_raw, load_split
    from routenlp.data.records import TRAIN_MORE_SPLIT, split_path
    from routenlp.data.sampling import stratified_sample
    from routenlp_core.paths import BENCHMARK_DIR
    from routenlp_core.tasks import TASK_NAMES

    sources = json.loads((BENCHMARK_DIR / "manifest.json").read_text(encoding="utf-8"))["sources"]
    chosen = []
    for task in TASK_NAMES:
        seen = [r for split in (*SPLITS, TRAIN_MORE_SPLIT) if split_path(task, split).is_file() for r in load_split(task, split)]
        seen_ids, seen_texts = {r["id"] for r in seen}, {_normalised(r["text"]) for r in seen}
        unseen = [r for r in load_raw(task, raw / sources[task][0]["path"]) if r["id"] not in seen_ids and _normalised(r["text"]) not in seen_texts]
        unique = list({_normalised(r["text"]): r for r in unseen}.values())  # one record per text
        chosen += sorted(stratified_sample(unique, per_task, seed), key=lambda r: r["id"])
    return chosen


def label_records(build, records: Sequence[Mapping[str, Any]], tiers: Sequence[str], progress: bool = True) -> list[dict[str, Any]]:
    """Every tier's scored answer on `records` (the all-pairs labelling of export.labeling)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from export.labeling import label_decoder, label_t1
    from export.t1 import T1_TASKS, load_t1

    rows = []
    for tier in tiers:
        if tier == "t1":
            for task in T1_TASKS:
                model, meta = load_t1(build.root / "t1" / task)
                task_records = [r for r in records if r["task"] == task]
                rows += [a.to_json() for a in label_t1(task, model, build.tokenizer(), task_records, max_len=meta["max_len"])]
            continue
        model = AutoModelForCausalLM.from_pretrained(str(build.decoder_dir(tier))).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(build.decoder_dir(tier)))
        answers = label_decoder(tier, model, tokenizer, list(records), max_new_tokens=build.profile.max_answer_tokens,
                                max_prompt_tokens=build.profile.max_input_tokens, progress=progress)
        rows += [a.to_json() for a in answers]
    return rows


def load_confirm_records() -> list[dict[str, Any]]:
    """The committed confirm split (benchmark/confirm.jsonl; clients.confirm_eval draws it once)."""
    from routenlp.data.records import load_records

    return list(load_records(confirm_records_path()))


def confirm_records_path() -> Path:
    from routenlp.data.records import CONFIRM_FILE
    from routenlp_core.paths import BENCHMARK_DIR

    return BENCHMARK_DIR / CONFIRM_FILE
