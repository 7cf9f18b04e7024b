"""fin_summary from ECTSum.

Two layouts, told apart by their subfolders:
- para/{split}/source + target: line-aligned key sentences -> bullet summary lines (short pairs);
- final/{split}/ects + gt_summaries: whole earnings-call transcripts -> bullet summaries.
Both give one record per call (file name = TICKER_qN_YEAR.txt); doc = the ticker, so one
company's calls never straddle two splits.
"""

from __future__ import annotations

from pathlib import Path

from routenlp.data.rawpath import find_pair_dirs, read_text
from routenlp.data.records import MAX_DOCUMENT_CHARS, make_record

TASK = "fin_summary"


def company(call_stem: str) -> str:
    """'AAN_q1_2021' -> 'AAN' (the ticker may itself contain underscores)."""
    parts = call_stem.rsplit("_", 2)
    return parts[0] if len(parts) == 3 else call_stem


def _lines(path: Path, unique: bool = False) -> str:
    """Non-empty stripped lines; unique drops repeats (para sources repeat a key sentence once
    per summary line it supports, which adds nothing to a model input)."""
    lines = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    return "\n".join(dict.fromkeys(lines) if unique else lines)


def _load_pairs(folders: list[Path], inputs: str, targets: str, kind: str, max_chars: int | None) -> list[dict]:
    records = []
    for folder in folders:
        for source in sorted((folder / inputs).glob("*.txt")):
            target_file = folder / targets / source.name
            if not target_file.is_file():
                raise FileNotFoundError(f"no {targets} file for {source}")
            text, target = _lines(source, unique=True), _lines(target_file)
            if text and target:
                records.append(
                    make_record(TASK, f"{TASK}:{kind}:{source.stem}", text, target, max_chars=max_chars,
                                doc=company(source.stem))
                )
    return records


def load_ectsum(path: str | Path) -> list[dict]:
    """Key-sentence pairs found at or under path (e.g. ectsum/, ectsum/para, ectsum/para/val);
    when there are none, whole-transcript documents (e.g. ectsum/final/val)."""
    pairs = find_pair_dirs(path, "source", "target")
    if pairs:
        return _load_pairs(pairs, "source", "target", "para", None)
    return load_ectsum_documents(path)


def load_ectsum_documents(path: str | Path) -> list[dict]:
    """Whole transcripts (cut to MAX_DOCUMENT_CHARS) -> their bullet summaries."""
    folders = find_pair_dirs(path, "ects", "gt_summaries")
    if not folders:
        raise FileNotFoundError(f"{path} holds neither source/+target/ nor ects/+gt_summaries/ (ECTSum layout)")
    return _load_pairs(folders, "ects", "gt_summaries", "doc", MAX_DOCUMENT_CHARS)
