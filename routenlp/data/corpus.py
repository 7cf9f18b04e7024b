"""Unlabelled in-domain text for pretraining a decoder tier (issue 19: what makes real ladders is
pretraining compute). The corpus is the text of each task's training portion that no benchmark
record holds: mostly the unlabelled sentences of the CUAD contracts and CLAUDETTE terms of service
whose documents went to train. No calibration, dev or confirm text can reach it: their documents are
not in the training portion (fin_ner's blocks, the exception, leave nothing over), and every text a
benchmark record of any split or the confirm split holds is dropped, so the router pool and
train_more stay text the tiers are labelled on or tuned on, not text they pretrained on.

Written by `routenlp data build` as benchmark/corpus/pretrain.jsonl.gz (one document a line:
task, doc, text = its remaining segments in source order, one a line) with its own manifest, so
that adding it changes no other build step's key."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from routenlp.data.records import record_group
from routenlp.data.splits import normalised_text
from routenlp_core.paths import BENCHMARK_DIR

CORPUS_DIR = "corpus"
CORPUS_FILE = "pretrain.jsonl.gz"
CORPUS_MANIFEST = "manifest.json"


def corpus_path(bench_dir: Path = BENCHMARK_DIR) -> Path:
    return Path(bench_dir) / CORPUS_DIR / CORPUS_FILE


def unlabelled_documents(task: str, portion: Iterable[dict], held_texts: set[str]) -> list[dict]:
    """One document per source document of `portion` (records in source order) with the segments
    whose normalised text is not in `held_texts`; documents left empty are dropped."""
    documents: dict[str, list[str]] = {}
    for record in portion:
        if normalised_text(record["text"]) not in held_texts:
            documents.setdefault(record_group(record), []).append(record["text"])
    return [{"task": task, "doc": doc, "text": "\n".join(texts)} for doc, texts in documents.items()]


def write_corpus(bench_dir: Path, documents: list[dict]) -> dict:
    """Write the corpus (gzip with a fixed mtime: a rebuild is byte-identical) and its manifest."""
    folder = Path(bench_dir) / CORPUS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in documents)
    path = folder / CORPUS_FILE
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as out:
        out.write(lines.encode("utf-8"))
    per_task: dict[str, dict[str, int]] = {}
    for d in documents:
        row = per_task.setdefault(d["task"], {"documents": 0, "chars": 0})
        row["documents"] += 1
        row["chars"] += len(d["text"])
    manifest = {"file": CORPUS_FILE, "sha256": corpus_digest(path), "documents": len(documents), "per_task": dict(sorted(per_task.items()))}
    (folder / CORPUS_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def corpus_digest(path: Path | None = None) -> str:
    return hashlib.sha256(Path(path or corpus_path()).read_bytes()).hexdigest()


def load_corpus(path: Path | None = None) -> list[dict]:
    path = Path(path or corpus_path())
    if not path.is_file():
        raise FileNotFoundError(f"pretraining corpus not found: {path} (written by `routenlp data build`)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]
