"""legal_clause from CUAD: master_clauses.csv (per contract, each category's extracted clause texts
as a Python-list string) + full_contract_txt/ (the contract texts).

Contracts are cut into sentence-like segments; a segment gets the kept category whose extracted
clause text covers at least COVER_FRACTION of it, "none" when no kept clause touches it, and is
left out when a kept clause only grazes it (its label would be a coin toss).
"""

from __future__ import annotations

import ast
import csv
import hashlib
import re
from pathlib import Path

from routenlp.data.rawpath import read_text
from routenlp.data.records import make_record
from routenlp_core.labels import CLAUSE_CATEGORIES, NONE_LABEL

TASK = "legal_clause"
COVER_FRACTION = 0.5
# Shorter pieces are headings and list numbers ("1.", "Services."), not sentences.
MIN_SEGMENT_CHARS = 30
_LINE_BREAK = re.compile(r"[ \t\r\f\v]*\n\s*")
_CONTINUES = re.compile(r"[a-z0-9,]")
_BOUNDARY = re.compile(r"(?<=[.;!?])\s+(?=[\"“(\[A-Z0-9])")
# A period after these does not end a sentence ("XYZ Inc. shall", "Section No. 4").
_ABBREVIATION = re.compile(r"(?:\b(?:Inc|Ltd|Co|Corp|No|Nos|Sec|Mr|Ms|Mrs|Dr|St|Jr|vs|etc|e\.g|i\.e)|\b[A-Z])\.$")


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    piece = text[start:end]
    return start + len(piece) - len(piece.lstrip()), start + len(piece.rstrip())


def _blocks(text: str) -> list[tuple[int, int]]:
    """Paragraph offsets: contract texts put blank lines between paragraphs, but also inside a
    sentence at page breaks; a break between a lowercase/comma end and a lowercase start is the
    latter and does not end the block."""
    blocks, start = [], 0
    for gap in _LINE_BREAK.finditer(text):
        before, after = text[gap.start() - 1 : gap.start()], text[gap.end() : gap.end() + 1]
        if not (_CONTINUES.match(before) and after.islower()):
            blocks.append((start, gap.start()))
            start = gap.end()
    blocks.append((start, len(text)))
    return blocks


def segment_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of sentence-like segments: paragraphs, split at sentence ends."""
    spans = []
    for block_start, block_end in _blocks(text):
        body, start = text[block_start:block_end], 0
        for cut in _BOUNDARY.finditer(body):
            if not _ABBREVIATION.search(body[max(0, cut.start() - 12) : cut.start()]):
                spans.append((block_start, *_strip_span(body, start, cut.start())))
                start = cut.end()
        spans.append((block_start, *_strip_span(body, start, len(body))))
    return [(offset + a, offset + b) for offset, a, b in spans if b > a]


def clause_intervals(text: str, clauses: list[str]) -> list[tuple[int, int]]:
    """Where each extracted clause occurs in text, matching any whitespace between its words."""
    intervals = []
    for clause in clauses:
        words = clause.split()
        if words:
            pattern = re.compile(r"\s+".join(map(re.escape, words)))
            intervals += [(m.start(), m.end()) for m in pattern.finditer(text)]
    return intervals


def _overlap(start: int, end: int, intervals: list[tuple[int, int]]) -> int:
    covered = sorted((max(start, a), min(end, b)) for a, b in intervals if a < end and b > start)
    total, reach = 0, start
    for a, b in covered:  # merge so overlapping clause copies are not counted twice
        a = max(a, reach)
        if b > a:
            total, reach = total + b - a, b
    return total


def segment_label(start: int, end: int, intervals: dict[str, list[tuple[int, int]]]) -> str | None:
    """Best-covering kept category, none if untouched, None (drop) if only partly touched."""
    best, best_cover = NONE_LABEL, 0.0
    for label, spans in intervals.items():  # CLAUSE_CATEGORIES order breaks ties
        cover = _overlap(start, end, spans) / (end - start)
        if cover > best_cover:
            best, best_cover = label, cover
    if best_cover == 0:
        return NONE_LABEL
    return best if best_cover >= COVER_FRACTION else None


def contract_key(filename: str) -> str:
    """Short, stable, readable document key for a contract file name."""
    stem = Path(filename).stem
    readable = re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_")[:32]
    return f"{readable}_{hashlib.sha1(stem.encode('utf-8')).hexdigest()[:6]}"


def _contract_rows(folder: Path):
    """(row, text path) for each master_clauses row whose contract text is present."""
    csv.field_size_limit(1 << 30)  # clause cells can be long
    texts = {p.stem.lower(): p for p in (folder / "full_contract_txt").glob("*.txt")}
    with (folder / "master_clauses.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            text_path = texts.get(Path(row["Filename"]).stem.lower())
            if text_path is not None:
                yield row, text_path


def load_cuad(path: str | Path) -> list[dict]:
    """Segment records of every contract; path: the cuad/ folder or its master_clauses.csv."""
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    if not (folder / "master_clauses.csv").is_file() or not (folder / "full_contract_txt").is_dir():
        raise FileNotFoundError(f"{folder} needs master_clauses.csv and full_contract_txt/ (CUAD layout)")
    records = []
    for row, text_path in _contract_rows(folder):
        text = read_text(text_path)
        intervals = {
            label: clause_intervals(text, ast.literal_eval(row.get(column) or "[]"))
            for column, label in CLAUSE_CATEGORIES.items()
        }
        doc = contract_key(text_path.name)
        for i, (start, end) in enumerate(segment_spans(text)):
            label = segment_label(start, end, intervals) if end - start >= MIN_SEGMENT_CHARS else None
            if label is not None:
                segment = " ".join(text[start:end].split())
                records.append(make_record(TASK, f"{TASK}:{doc}:{i:04d}", segment, label, doc=doc))
    return records
