"""The text the decoder tiers (T2-T4) are trained to produce for each task, and its parsing back.

One shared prompt template for every task; the answer is the label (classification), the
entities as `TYPE: span; TYPE: span` or `none` (fin_ner), or the reference text (generation).
parse_output(task, format_target(r), r) == r["target"] for every classification and NER record.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from routenlp_core.labels import NER_TYPES, NONE_LABEL, task_labels
from routenlp_core.tasks import get_task


@dataclass(frozen=True)
class Generation:
    """A decoder tier's answer: text, chosen-token logprobs (for the cascade's uncertainty) and billed
    token counts; the offline engines also give the token ids and why generation stopped."""

    text: str
    token_logprobs: Sequence[float]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_ids: Sequence[int] = ()
    finish_reason: str | None = None


PROMPT_TEMPLATE = "task: {task}\ntext: {text}\nanswer:"
ENTITY_SEPARATOR = "; "
# A model answer may repeat the cue or quote the label; these are stripped before matching.
_ANSWER_PREFIX = re.compile(r"^\s*(?:answer|label)\s*:\s*", re.IGNORECASE)
# Entity list items start with a known type; splitting only there keeps a ';' inside a span.
_ENTITY_ITEM = re.compile(r"(?:^|;)\s*(" + "|".join(NER_TYPES) + r")\s*:\s*", re.IGNORECASE)
# Labels within this similarity of a known label are mapped onto it (typos, plural, spacing).
LABEL_MATCH_CUTOFF = 0.85


def prompt_text(record: dict) -> str:
    return PROMPT_TEMPLATE.format(task=record["task"], text=record["text"])


def ner_entities(tokens: list[str], tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, start, end) of each maximal run of one I-TYPE tag (IO tags cannot mark a boundary
    between two same-type neighbours, so such a run is one entity)."""
    entities: list[tuple[str, int, int]] = []
    for i, tag in enumerate(tags):
        kind = tag[2:] if tag.startswith(("I-", "B-")) else None
        if kind is None:
            continue
        if entities and entities[-1][0] == kind and entities[-1][2] == i:
            entities[-1] = (kind, entities[-1][1], i + 1)
        else:
            entities.append((kind, i, i + 1))
    return entities


def format_entities(tokens: list[str], tags: list[str]) -> str:
    entities = ner_entities(tokens, tags)
    if not entities:
        return NONE_LABEL
    return ENTITY_SEPARATOR.join(f"{kind}: {' '.join(tokens[start:end])}" for kind, start, end in entities)


def format_target(record: dict) -> str:
    kind = get_task(record["task"]).kind
    if kind == "ner":
        return format_entities(record["tokens"], record["target"])
    return record["target"]


def clean_label(task: str, text: str) -> str:
    """First line of the answer, unquoted, mapped onto the known label it names (ignoring case and
    separators) or nearly names; an unrecognised answer is returned as cleaned (it scores wrong)."""
    line = _ANSWER_PREFIX.sub("", (text.strip().splitlines() or [""])[0]).strip().strip("\"'`.").strip()
    labels = task_labels(task)
    if not labels or line in labels:
        return line
    by_key = {_label_key(label): label for label in labels}
    key = _label_key(line)
    if key in by_key:
        return by_key[key]
    close = difflib.get_close_matches(key, list(by_key), n=1, cutoff=LABEL_MATCH_CUTOFF)
    return by_key[close[0]] if close else line


def _label_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _find(tokens: list[str], span: list[str], taken: list[bool], start: int, fold: bool) -> int:
    norm = (lambda s: s.lower()) if fold else (lambda s: s)
    want = [norm(t) for t in span]
    for i in range(start, len(tokens) - len(span) + 1):
        if not any(taken[i : i + len(span)]) and [norm(t) for t in tokens[i : i + len(span)]] == want:
            return i
    return -1


def parse_entities(text: str, tokens: list[str]) -> list[str]:
    """IO tags, one per token, from `TYPE: span; ...`: each span is placed at its first free
    occurrence after the previous entity (answers list entities in order), else anywhere; spans
    not in the sentence are ignored."""
    tags = ["O"] * len(tokens)
    taken = [False] * len(tokens)
    items = _ENTITY_ITEM.split(text.strip())
    cursor = 0
    for kind, span_text in zip(items[1::2], items[2::2]):
        span = span_text.strip().rstrip(";").split()
        if not span:
            continue
        for start, fold in ((cursor, False), (0, False), (cursor, True), (0, True)):
            at = _find(tokens, span, taken, start, fold)
            if at >= 0:
                break
        if at < 0:
            continue
        for i in range(at, at + len(span)):
            tags[i], taken[i] = f"I-{kind.upper()}", True
        cursor = at + len(span)
    return tags


def parse_output(task: str, text: str, record: dict):
    """A model's answer text -> a prediction comparable with record["target"]."""
    kind = get_task(task).kind
    if kind == "classification":
        return clean_label(task, text)
    if kind == "ner":
        return parse_entities(text, record["tokens"])
    return text.strip()
