"""Decoder answer format: prompts, targets, and parsing answers back into predictions."""

from __future__ import annotations

import pytest

from routenlp.data import SPLITS, load_split
from routenlp_core.answers import format_target, parse_output, prompt_text
from routenlp_core.tasks import TASKS

STRUCTURED = [name for name, spec in TASKS.items() if spec.kind in ("classification", "ner")]


def ner_record(tokens: str, tags: str) -> dict:
    words = tokens.split()
    return {"id": "x", "task": "fin_ner", "tokens": words, "text": " ".join(words), "target": tags.split()}


@pytest.mark.parametrize("task", STRUCTURED)
@pytest.mark.parametrize("split", SPLITS)
def test_round_trip_over_committed_splits(task, split):
    records = load_split(task, split)
    assert records
    for record in records:
        assert parse_output(task, format_target(record), record) == record["target"], record["id"]


def test_prompt_is_one_shared_template():
    record = {"id": "x", "task": "cs_intent", "text": "Where is my card?", "target": "card_arrival"}
    assert prompt_text(record) == "task: cs_intent\ntext: Where is my card?\nanswer:"
    assert prompt_text({**record, "task": "legal_risk"}).startswith("task: legal_risk\n")


def test_classification_answers_are_cleaned_and_mapped():
    record = {"task": "cs_intent"}
    assert parse_output("cs_intent", " Answer: Card Arrival.\nbecause...", record) == "card_arrival"
    assert parse_output("cs_intent", "card_arival", record) == "card_arrival"  # typo
    assert parse_output("cs_intent", "refund not showing up", record) == "Refund_not_showing_up"
    assert parse_output("legal_risk", "'Clearly unfair'", record) == "clearly_unfair"
    assert parse_output("legal_clause", "governing-law", record) == "governing_law"
    assert parse_output("legal_risk", "banana", record) == "banana"  # unknown: kept, scores wrong
    assert parse_output("legal_risk", "", record) == ""


def test_ner_target_format():
    record = ner_record("between SILICON VALLEY BANK and John Smith of California",
                        "O I-ORG I-ORG I-ORG O I-PER I-PER O I-LOC")
    assert format_target(record) == "ORG: SILICON VALLEY BANK; PER: John Smith; LOC: California"
    assert format_target(ner_record("no entities here", "O O O")) == "none"


def test_ner_parse_is_always_aligned_with_tokens():
    record = ner_record("the Bank lent to John Smith and the Bank", "O O O O I-PER I-PER O O I-ORG")
    n = len(record["tokens"])
    for answer in ("", "none", "garbage ;;: text", "ORG: Nonexistent Corp", "PER: John Smith; ORG: Bank; ORG: Bank; ORG: Bank"):
        assert len(parse_output("fin_ner", answer, record)) == n
    # entities are placed in order: the second "Bank" follows the person
    assert parse_output("fin_ner", "PER: John Smith; ORG: Bank", record) == record["target"]
    # case and spacing of the type and span are forgiven
    assert parse_output("fin_ner", "per : john smith", record)[4:6] == ["I-PER", "I-PER"]
    # an entity listed out of order is still found
    assert parse_output("fin_ner", "ORG: Bank; PER: John Smith", record)[4:6] == ["I-PER", "I-PER"]


def test_ner_span_containing_a_semicolon_survives():
    record = ner_record("paid A ; B Ltd today", "O I-ORG I-ORG I-ORG I-ORG O")
    assert format_target(record) == "ORG: A ; B Ltd"
    assert parse_output("fin_ner", format_target(record), record) == record["target"]


def test_generation_answers_are_stripped():
    record = {"task": "cs_response", "target": "Sure, I can help."}
    assert parse_output("cs_response", "  Sure, I can help.\n", record) == "Sure, I can help."
    assert format_target(record) == "Sure, I can help."
