"""legal_risk from CLAUDETTE: sentences/DOC.txt (one sentence a line) and tags/DOC.txt (the same
lines, space-separated tags such as `ltd2 ter3`; empty = untagged)."""

from __future__ import annotations

import re
from pathlib import Path

from routenlp.data.rawpath import read_text
from routenlp.data.records import make_record
from routenlp_core.labels import NONE_LABEL, RISK_LEVELS

TASK = "legal_risk"
# Unfairness tags end in their level digit; others (e.g. `countrym`) carry no risk level.
_LEVEL = re.compile(r"^[a-z]+([123])$")


def risk_label(tags: str) -> str:
    """Highest level among a sentence's tags, as a label; none when no tag has a level."""
    levels = [int(m.group(1)) for m in map(_LEVEL.match, tags.split()) if m]
    return RISK_LEVELS[max(levels)] if levels else NONE_LABEL


def _document_pairs(path: Path) -> list[tuple[Path, Path]]:
    """(sentences file, tags file) pairs: a corpus folder, or one sentences/DOC.txt file."""
    if path.is_file():
        return [(path, path.parent.parent / "tags" / path.name)]
    if not (path / "sentences").is_dir():
        raise FileNotFoundError(f"{path} has no sentences/ folder (CLAUDETTE layout: sentences/ + tags/)")
    return [(s, path / "tags" / s.name) for s in sorted((path / "sentences").glob("*.txt"))]


def load_claudette(path: str | Path) -> list[dict]:
    """One record per non-empty sentence; doc = the terms-of-service document name."""
    records = []
    for sentences_file, tags_file in _document_pairs(Path(path)):
        sentences = read_text(sentences_file).splitlines()
        if not tags_file.is_file():
            raise FileNotFoundError(f"no tags file {tags_file} for {sentences_file}")
        tags = read_text(tags_file).splitlines()
        if len(tags) > len(sentences):
            raise ValueError(f"{tags_file} has more lines than {sentences_file}")
        tags += [""] * (len(sentences) - len(tags))
        doc = sentences_file.stem
        for i, (sentence, tag_line) in enumerate(zip(sentences, tags)):
            if sentence.strip():
                records.append(
                    make_record(TASK, f"{TASK}:{doc}:{i:04d}", sentence.strip(), risk_label(tag_line),
                                doc=doc, tags=" ".join(tag_line.split()))
                )
    return records
