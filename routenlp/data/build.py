"""Build the committed benchmark (benchmark/<task>/{train,calibration,dev}.jsonl + manifest.json)
from the raw datasets, deterministically: same raw data + seed -> byte-identical files."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from routenlp.data.banking77 import banking77_labels
from routenlp.data.corpus import unlabelled_documents, write_corpus
from routenlp.data.ectsum import load_ectsum_documents
from routenlp.data.loaders import load_raw
from routenlp.data.records import (
    CONFIRM_FILE,
    MAX_DOCUMENT_CHARS,
    MAX_INPUT_CHARS,
    SPLITS,
    TRAIN_MORE_SPLIT,
    load_records,
    record_group,
    write_records,
)
from routenlp.data.splits import (
    EVALUATION_SPLITS,
    SPLIT_FRACTIONS,
    drop_training_duplicates,
    normalised_text,
    sample_capped,
    seeded_rng,
    split_by_group,
    split_within_documents,
)
from routenlp_core.labels import FIXED_LABELS, NER_TYPES, NONE_LABEL
from routenlp_core.paths import BENCHMARK_DIR, shared_data_dir
from routenlp_core.tasks import TASK_NAMES

# 2: fin_ner split within documents; evaluation records repeating a train text dropped;
# 3: train_more (the rest of a task's training portion) for the tasks in TRAIN_MORE_TASKS
BUILD_VERSION = 3
DEFAULT_SEED = 13

# Raw input of each task, relative to the raw data folder.
RAW_SOURCES: dict[str, str] = {
    "cs_intent": "banking77/train.csv",
    "cs_response": "cs_responses/bitext_customer_support.csv",
    "fin_ner": "fin_ner/FIN5.txt",
    "fin_summary": "ectsum/para",
    "legal_clause": "cuad",
    "legal_risk": "claudette",
}
# The whole-transcript fin_summary set (benchmark/fin_summary/documents.jsonl).
DOCUMENT_SOURCE = "ectsum/final/val"
MAX_DOCUMENTS = 20
# Each dataset's licence (or the README that states it), copied next to its processed files.
LICENCE_FILES: dict[str, str] = {
    "cs_intent": "banking77/LICENSE",
    "cs_response": "cs_responses/LICENSE.txt",
    "fin_ner": "fin_ner/README.txt",
    "fin_summary": "ectsum/LICENSE.txt",
    "legal_clause": "cuad/CUAD_v1_README.txt",
    "legal_risk": "claudette/LICENSE.txt",
}
# Records per split, chosen so the whole committed benchmark stays around 5 MB.
CAPS: dict[str, dict[str, int]] = {
    "cs_intent": {"train": 2000, "calibration": 300, "dev": 300},
    "cs_response": {"train": 700, "calibration": 300, "dev": 300},
    "fin_ner": {"train": 2000, "calibration": 300, "dev": 300},
    "fin_summary": {"train": 500, "calibration": 200, "dev": 200},
    "legal_clause": {"train": 1500, "calibration": 300, "dev": 300},
    "legal_risk": {"train": 2000, "calibration": 300, "dev": 300},
}
# Tasks whose training portion beyond the train cap is also written, as <task>/train_more.jsonl:
# pricier tiers may train on it (a tier's `train_more` setting), so a bigger tier can also have
# seen more data, as real model families do. Only where the portion holds much more than the cap.
TRAIN_MORE_TASKS = ("cs_intent", "legal_clause")
# Tasks whose "none" records are cut to at most half of each split.
NONE_CAPPED = ("legal_clause", "legal_risk")
# Tasks split within their documents (blocks of this many consecutive records, one record dropped
# on the evaluation side of each boundary): FIN5's five documents differ too much in content for
# whole-document calibration and dev splits to be exchangeable.
WITHIN_DOCUMENT_SPLIT: dict[str, dict[str, int]] = {"fin_ner": {"block_size": 20, "gap": 1}}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_digest(raw_dir: Path, relative: str) -> dict:
    """sha256 of a raw file; for a folder, sha256 over its sorted `relative-path sha256` lines."""
    path = raw_dir / relative
    if path.is_file():
        return {"path": relative, "sha256": sha256_file(path), "files": 1}
    files = sorted(p for p in path.rglob("*") if p.is_file())
    listing = "".join(f"{p.relative_to(path).as_posix()} {sha256_file(p)}\n" for p in files)
    return {"path": relative, "sha256": hashlib.sha256(listing.encode("utf-8")).hexdigest(), "files": len(files)}


def task_label_sets(raw_dir: Path) -> dict[str, list[str]]:
    labels = {task: list(values) for task, values in FIXED_LABELS.items()}
    labels["cs_intent"] = banking77_labels(raw_dir / RAW_SOURCES["cs_intent"])
    labels["fin_ner"] = sorted([f"I-{kind}" for kind in NER_TYPES] + ["O"])
    return dict(sorted(labels.items()))


def split_task(task: str, records: list[dict], seed: int) -> dict[str, list[dict]]:
    """All of a task's records per split, by document or (WITHIN_DOCUMENT_SPLIT) by block."""
    rng = seeded_rng(seed, task, "split")
    if task in WITHIN_DOCUMENT_SPLIT:
        return split_within_documents(records, rng, **WITHIN_DOCUMENT_SPLIT[task])
    return split_by_group(records, rng)


def build_task(task: str, raw_dir: Path, seed: int, held_out: Iterable[dict] = ()) -> tuple[dict[str, list[dict]], dict[str, set[str]], dict[str, int], list[dict]]:
    """Records of one task per split (split, capped and none-balanced, then calibration and dev
    records whose text repeats one of the whole train portion dropped), the documents each split
    was given (including those the caps left out), how many duplicates were dropped per split, and
    the whole training portion (in source order: the pretraining corpus is cut from it).
    Duplicates go after the caps so that removing them moves no other record. For TRAIN_MORE_TASKS
    also train_more: the rest of the train portion, none-balanced, without `held_out` texts."""
    records = load_raw(task, raw_dir / RAW_SOURCES[task])
    if not records:
        raise ValueError(f"no records for {task} in {raw_dir / RAW_SOURCES[task]}")
    parts = split_task(task, records, seed)
    none_label = NONE_LABEL if task in NONE_CAPPED else None
    splits = {
        split: sample_capped(parts[split], CAPS[task][split], seeded_rng(seed, task, split), none_label)
        for split in SPLITS
    }
    dropped = {}
    for split in EVALUATION_SPLITS:
        kept = drop_training_duplicates(splits[split], parts["train"])
        dropped[split] = len(splits[split]) - len(kept)
        splits[split] = kept
    if task in TRAIN_MORE_TASKS:
        splits[TRAIN_MORE_SPLIT] = train_more(parts["train"], splits["train"], held_out, seeded_rng(seed, task, TRAIN_MORE_SPLIT), none_label)
    train_ids = {r["id"] for r in parts["train"]}
    portion = [r for r in records if r["id"] in train_ids]
    return splits, {split: {record_group(r) for r in parts[split]} for split in SPLITS}, dropped, portion


def train_more(portion: list[dict], train: list[dict], held_out: Iterable[dict], rng, none_label: str | None) -> list[dict]:
    """The training portion's records not in the train split and whose text is not a held-out
    record's (the committed confirm split was drawn from these unseen records first), with "none"
    cut to at most as many as the labelled ones, sorted by id."""
    taken = {r["id"] for r in train}
    held = {normalised_text(r["text"]) for r in held_out}
    rest = [r for r in portion if r["id"] not in taken and normalised_text(r["text"]) not in held]
    return sample_capped(rest, len(rest), rng, none_label)


def build_documents(raw_dir: Path, seed: int, excluded_groups: set[str]) -> list[dict]:
    """Whole-transcript fin_summary records of companies outside train and calibration."""
    records = [r for r in load_ectsum_documents(raw_dir / DOCUMENT_SOURCE) if record_group(r) not in excluded_groups]
    return sample_capped(records, MAX_DOCUMENTS, seeded_rng(seed, "fin_summary", "documents"))


def _clear_outputs(task_dir: Path) -> None:
    # Only the files a build writes, so a rebuild never keeps a stale split around.
    for old in task_dir.glob("*.jsonl"):
        old.unlink()


def build_benchmark(raw_dir: Path | None = None, out_dir: Path = BENCHMARK_DIR, seed: int = DEFAULT_SEED,
                    held_out_path: Path = BENCHMARK_DIR / CONFIRM_FILE) -> dict:
    """Write out_dir/<task>/{train,calibration,dev}.jsonl (+ train_more.jsonl for TRAIN_MORE_TASKS,
    fin_summary/documents.jsonl), the licence files and out_dir/manifest.json; return the manifest.
    Records of `held_out_path` (the committed confirm split, when there is one) stay out of train_more."""
    raw_dir = Path(raw_dir) if raw_dir is not None else shared_data_dir()
    out_dir = Path(out_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw data folder not found: {raw_dir} (set --raw or ROUTENLP_RAW_DATA)")
    counts: dict[str, dict[str, int]] = {}
    sources: dict[str, list[dict]] = {}
    duplicates: dict[str, dict[str, int]] = {}
    held_out = load_records(held_out_path) if Path(held_out_path).is_file() else []
    portions: dict[str, list[dict]] = {}
    held_texts = {normalised_text(r["text"]) for r in held_out}  # every text a record of any split holds
    for task in TASK_NAMES:
        task_dir = out_dir / task
        task_dir.mkdir(parents=True, exist_ok=True)
        _clear_outputs(task_dir)
        splits, groups, duplicates[task], portions[task] = build_task(task, raw_dir, seed, [r for r in held_out if r["task"] == task])
        counts[task] = {split: write_records(task_dir / f"{split}.jsonl", records) for split, records in splits.items()}
        held_texts |= {normalised_text(r["text"]) for records in splits.values() for r in records}
        sources[task] = [source_digest(raw_dir, RAW_SOURCES[task])]
        if task == "fin_summary":
            documents = build_documents(raw_dir, seed, groups["train"] | groups["calibration"])
            counts[task]["documents"] = write_records(task_dir / "documents.jsonl", documents)
            held_texts |= {normalised_text(r["text"]) for r in documents}
            sources[task].append(source_digest(raw_dir, DOCUMENT_SOURCE))
        licence = raw_dir / LICENCE_FILES[task]
        shutil.copyfile(licence, task_dir / licence.name)
    manifest = {
        "build_version": BUILD_VERSION,
        "seed": seed,
        "split_fractions": SPLIT_FRACTIONS,
        "caps": CAPS,
        "train_more_tasks": list(TRAIN_MORE_TASKS),
        "train_more_held_out": {"file": Path(held_out_path).name, "records": len(held_out)},
        "within_document_split": WITHIN_DOCUMENT_SPLIT,
        "dropped_train_duplicates": duplicates,
        "max_documents": MAX_DOCUMENTS,
        "max_input_chars": MAX_INPUT_CHARS,
        "max_document_chars": MAX_DOCUMENT_CHARS,
        "counts": counts,
        "sources": sources,
        "licences": {task: f"{task}/{Path(LICENCE_FILES[task]).name}" for task in TASK_NAMES},
        "labels": task_label_sets(raw_dir),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    # After every split is known: the corpus keeps no text any of them holds (its own manifest, so
    # the benchmark manifest, part of every build step's key, does not depend on it).
    write_corpus(out_dir, [d for task in TASK_NAMES for d in unlabelled_documents(task, portions[task], held_texts)])
    return manifest
