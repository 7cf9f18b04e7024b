"""fin_ner from FIN5-style CoNLL: `token POS - tag` lines, blank line between sentences,
-DOCSTART- between documents, IO tags (I-PER, I-LOC, I-ORG, I-MISC, O)."""

from __future__ import annotations

from pathlib import Path

from routenlp.data.rawpath import read_text, resolve_file
from routenlp.data.records import make_record

TASK = "fin_ner"
# Sentences longer than this are cut (tokens and tags together) so T1 encoders and prompts fit.
MAX_TOKENS = 200


def _sentences(lines: list[str]):
    """Yield (document number, tokens, tags); documents count from 1 at each -DOCSTART-."""
    doc, tokens, tags = 0, [], []
    for line in lines + [""]:
        fields = line.split()
        if fields and fields[0] == "-DOCSTART-":
            doc += 1
            continue
        if not fields:
            if tokens:
                yield max(doc, 1), tokens, tags
            tokens, tags = [], []
            continue
        tokens.append(fields[0])
        tags.append(fields[-1])


def load_conll(path: str | Path) -> list[dict]:
    """One record per sentence: tokens, IO tags as given, text = tokens joined by spaces."""
    file = resolve_file(path, "FIN5.txt", "*.txt")
    records, per_doc = [], {}
    for doc, tokens, tags in _sentences(read_text(file).splitlines()):
        tokens, tags = tokens[:MAX_TOKENS], tags[:MAX_TOKENS]
        index = per_doc[doc] = per_doc.get(doc, -1) + 1
        doc_id = f"{file.stem}:d{doc}"
        text = " ".join(tokens)
        records.append(
            make_record(TASK, f"{TASK}:{doc_id}:{index:04d}", text, tags, tokens=tokens, doc=doc_id)
        )
    return records
