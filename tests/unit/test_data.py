"""The benchmark data layer: raw-format loaders (on tiny fixtures written here in each raw
format), document-level splits, deterministic builds, and the committed benchmark."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest

from routenlp.data import (
    SPLITS,
    benchmark_stats,
    build_benchmark,
    format_stats_table,
    load_raw,
    load_records,
    load_split,
)
from routenlp.data.build import TRAIN_MORE_TASKS, WITHIN_DOCUMENT_SPLIT
from routenlp.data.claudette import risk_label
from routenlp.data.cuad import segment_spans
from routenlp.data.ectsum import company, load_ectsum_documents
from routenlp.data.records import CONFIRM_FILE, TRAIN_MORE_SPLIT, record_group, truncate_text
from routenlp.data.splits import (
    drop_training_duplicates,
    normalised_text,
    sample_capped,
    seeded_rng,
    split_by_group,
    split_within_documents,
)
from routenlp_core.labels import CLAUSE_LABELS, RISK_LABELS
from routenlp_core.paths import BENCHMARK_DIR, shared_data_dir
from routenlp_core.tasks import TASK_NAMES, UnknownTaskError

BITEXT_COLUMNS = ["context", "role", "instruction", "intent", "entity_type", "entity_value",
                  "start_offset", "end_offset", "category", "tags", "response"]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _write_csv(path: Path, header: list[str], rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_banking77(root: Path) -> None:
    intents = ["card_arrival", "lost_or_stolen_card", "Refund_not_showing_up"]
    rows = [{"text": f"question {i} about {intents[i % 3]}?", "category": intents[i % 3]} for i in range(30)]
    _write_csv(root / "banking77" / "train.csv", ["text", "category"], rows)
    _write(root / "banking77" / "categories.json", json.dumps(intents))
    _write(root / "banking77" / "LICENSE", "CC BY 4.0\n")


# FIN5 fixture: documents of 50, 62, 74 and 86 sentences (3-5 blocks of 20 each), every sentence
# distinct except the heading every document repeats (dropped from calibration and dev as a
# training duplicate).
FIN5_SIZES = (50, 62, 74, 86)


def write_fin5(root: Path) -> None:
    docs = []
    for d, size in enumerate(FIN5_SIZES):
        sentences = ["SECURITY NN - O\nAGREEMENT NN - O\n. . - O\n"]
        for i in range(1, size):
            kind = ("I-ORG", "I-PER", "I-LOC")[i % 3]
            sentences.append(f"Clause CD - O\n{d}.{i} CD - O\nwith IN - O\nName{i} NNP - {kind}\nX{d} NNP - {kind}\n. . - O\n")
        docs.append("-DOCSTART- -X- O O\n\n" + "\n".join(sentences) + "\n")
    _write(root / "fin_ner" / "FIN5.txt", "".join(docs))
    _write(root / "fin_ner" / "README.txt", "CC BY 3.0\n")


# Labelled sentences name their contract ({n}), so contracts are not copies of each other.
CONTRACT = (
    "EXHIBIT 10.1 SERVICES AGREEMENT\n\n"
    "1. Services. The Provider shall provide the services described in Exhibit A to the Customer. "
    "This Agreement {n} shall be governed by the laws of the State of New York. "
    "Neither party may assign this Agreement {n} without the prior written consent of the other party.\n"
    "The Customer may audit the books of the Provider {n} once per year upon\n   thirty days notice. "
    "XYZ Inc. shall pay all fees within thirty days of the invoice date.\n"
    "In no event shall either party's liability exceed the fees paid in the prior twelve months; "
    "this limit does not apply to any breach of confidentiality by the Customer hereunder.\n"
)


def write_cuad(root: Path, n_contracts: int = 6) -> None:
    folder = root / "cuad"
    header = ["Filename", "Document Name", "Governing Law", "Governing Law-Answer", "Anti-Assignment",
              "Anti-Assignment-Answer", "Audit Rights", "Audit Rights-Answer", "Cap on Liability"]
    rows = []
    for i in range(n_contracts):
        _write(folder / "full_contract_txt" / f"ACME{i}_2020-EX-10.1-SERVICES AGREEMENT.txt", CONTRACT.format(n=i))
        rows.append({
            "Filename": f"ACME{i}_2020-EX-10.1-SERVICES AGREEMENT.pdf",
            "Document Name": "['SERVICES AGREEMENT']",
            "Governing Law": f"['This Agreement {i} shall be governed by the laws of the State of New York.']",
            "Governing Law-Answer": "New York",
            "Anti-Assignment": f"['Neither party may assign this Agreement {i} without the prior written consent']",
            "Anti-Assignment-Answer": "Yes",
            # spans a line break in the text: matched whitespace-insensitively
            "Audit Rights": f"['The Customer may audit the books of the Provider {i} once per year upon thirty days notice.']",
            "Audit Rights-Answer": "Yes",
            # only a sliver of its sentence: the sentence is dropped as ambiguous
            "Cap on Liability": "[\"liability exceed the fees\"]",
        })
    # A row whose contract text is missing is skipped.
    rows.append({"Filename": "MISSING.pdf", "Document Name": "[]", "Governing Law": "[]"})
    _write_csv(folder / "master_clauses.csv", header, rows)
    _write(folder / "CUAD_v1_README.txt", "CC BY 4.0\n")


def write_bitext(root: Path) -> None:
    rows = [
        {**{c: "" for c in BITEXT_COLUMNS}, "context": "customer support", "role": "virtual assistant",
         "instruction": f"how can I cancel order {i}?", "intent": "cancel_order", "category": "ORDER",
         "response": "I can help.\n\n1. Log into {{Website Name}}.\n2. Open {{Order Details}}."}
        for i in range(20)
    ]
    _write_csv(root / "cs_responses" / "bitext_customer_support.csv", BITEXT_COLUMNS, rows)
    _write(root / "cs_responses" / "LICENSE.txt", "CDLA-Sharing-1.0\n")


def write_claudette(root: Path) -> None:
    folder = root / "claudette"
    for d in range(5):
        # distinct per document but for the URL line and "Thanks." (training duplicates)
        sentences = ["https://example.com/terms", "", f"We may terminate your account {d} at any time.",
                     f"These terms {d} are governed by Irish law.", f"You can delete your data {d}.", "Thanks."]
        tags = ["", "", "ter2 ltd3", "law1 countrym", "countrym", ""]
        _write(folder / "sentences" / f"Doc{d}.txt", "\n".join(sentences) + "\n")
        _write(folder / "tags" / f"Doc{d}.txt", "\n".join(tags) + "\n")
    _write(folder / "LICENSE.txt", "CC BY 4.0\n")
    _write(folder / "list_tags.txt", "ltd2\nltd3\n")


def write_ectsum(root: Path) -> None:
    folder = root / "ectsum"
    tickers = [f"T{i}" for i in range(12)] + ["BRK_B"]
    for i, ticker in enumerate(tickers):
        split = "val" if i % 4 == 0 else "train"
        for q in (1, 2):
            name = f"{ticker}_q{q}_2021.txt"
            key = f"Revenue for {ticker} was ${i}.{q} million in the quarter."
            _write(folder / "para" / split / "source" / name, f"{key}\n{key}\nWe expect growth.\n")
            _write(folder / "para" / split / "target" / name, f"q{q} revenue ${i}.{q} million.\nsees growth.\n")
            _write(folder / "final" / "val" / "ects" / name, f"Operator: welcome.\n{key}\n" + "Long talk. " * 50)
            _write(folder / "final" / "val" / "gt_summaries" / name, f"q{q} revenue ${i}.{q} million.\n")
    _write(folder / "LICENSE.txt", "GPL-3.0\n")


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    for writer in (write_banking77, write_fin5, write_cuad, write_bitext, write_claudette, write_ectsum):
        writer(root)
    return root


def assert_schema(records: list[dict], task: str) -> None:
    assert records, task
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), f"{task}: duplicate ids"
    for r in records:
        assert r["task"] == task and isinstance(r["id"], str) and isinstance(r["text"], str) and r["text"]
        json.dumps(r)  # JSON-serializable


# --- loaders -----------------------------------------------------------------------------------


def test_banking77_loader_file_and_folder_agree(raw_dir):
    by_file = load_raw("cs_intent", raw_dir / "banking77" / "train.csv")
    by_folder = load_raw("cs_intent", raw_dir / "banking77")
    assert by_file == by_folder
    assert_schema(by_file, "cs_intent")
    assert len(by_file) == 30
    assert by_file[2]["target"] == "Refund_not_showing_up"
    assert by_file[0]["id"] == "cs_intent:train:00000"


def test_fin5_loader_one_record_per_sentence(raw_dir):
    records = load_raw("fin_ner", raw_dir / "fin_ner")
    assert_schema(records, "fin_ner")
    assert len(records) == sum(FIN5_SIZES)
    assert {r["doc"] for r in records} == {"FIN5:d1", "FIN5:d2", "FIN5:d3", "FIN5:d4"}
    second = records[1]
    assert second["tokens"] == ["Clause", "0.1", "with", "Name1", "X0", "."]
    assert second["target"] == ["O", "O", "O", "I-PER", "I-PER", "O"]
    assert second["text"] == " ".join(second["tokens"]) and second["id"] == "fin_ner:FIN5:d1:0001"
    assert all(len(r["tokens"]) == len(r["target"]) for r in records)


def test_cuad_segments_and_clause_labels(raw_dir):
    records = load_raw("legal_clause", raw_dir / "cuad")
    assert_schema(records, "legal_clause")
    assert len({r["doc"] for r in records}) == 6  # the row without a contract text is skipped
    one_doc = [r for r in records if r["doc"] == records[0]["doc"]]
    labels = {r["text"]: r["target"] for r in one_doc}
    assert labels["This Agreement 0 shall be governed by the laws of the State of New York."] == "governing_law"
    assert labels["Neither party may assign this Agreement 0 without the prior written consent of the other party."] \
        == "anti_assignment"
    # clause text split by a line break in the contract still matches; whitespace is normalized
    assert labels["The Customer may audit the books of the Provider 0 once per year upon thirty days notice."] \
        == "audit_rights"
    # "Inc." does not end a sentence
    assert labels["XYZ Inc. shall pay all fees within thirty days of the invoice date."] == "none"
    # the liability sentence is only grazed by its clause: left out, not mislabelled "none"
    assert not any("liability exceed" in text for text in labels)
    # headings shorter than a sentence are not records
    assert not any(text.startswith("1.") and len(text) < 30 for text in labels)
    assert set(labels.values()) <= set(CLAUSE_LABELS)
    # the master csv path works as well as the folder
    assert load_raw("legal_clause", raw_dir / "cuad" / "master_clauses.csv") == records


def test_segment_spans_are_stripped_sentences():
    text = "1. Services. (a) Provider XYZ Inc. agrees. Next one; and more.\n\nLast line."
    pieces = [text[a:b] for a, b in segment_spans(text)]
    assert pieces == ["1.", "Services.", "(a) Provider XYZ Inc. agrees.", "Next one; and more.", "Last line."]


def test_bitext_loader_keeps_placeholders(raw_dir):
    records = load_raw("cs_response", raw_dir / "cs_responses" / "bitext_customer_support.csv")
    assert_schema(records, "cs_response")
    assert len(records) == 20
    assert "{{Website Name}}" in records[0]["target"] and "{{Order Details}}" in records[0]["target"]
    assert records[0]["text"] == "how can I cancel order 0?"
    assert records[0]["intent"] == "cancel_order"


def test_risk_label_is_highest_level():
    assert risk_label("ter2 ltd3") == "clearly_unfair"
    assert risk_label("law1") == "fair"
    assert risk_label("ch2 law1") == "potentially_unfair"
    assert risk_label("countrym") == "none"  # a tag without a level
    assert risk_label("") == "none"


def test_claudette_loader(raw_dir):
    records = load_raw("legal_risk", raw_dir / "claudette")
    assert_schema(records, "legal_risk")
    assert len(records) == 5 * 5  # the empty line is skipped
    doc0 = {r["text"]: r for r in records if r["doc"] == "Doc0"}
    assert doc0["We may terminate your account 0 at any time."]["target"] == "clearly_unfair"
    assert doc0["These terms 0 are governed by Irish law."]["target"] == "fair"
    assert doc0["You can delete your data 0."]["target"] == "none"
    assert doc0["We may terminate your account 0 at any time."]["id"] == "legal_risk:Doc0:0002"
    assert {r["target"] for r in records} <= set(RISK_LABELS)
    # one document file works too
    single = load_raw("legal_risk", raw_dir / "claudette" / "sentences" / "Doc0.txt")
    assert [r["id"] for r in single] == [r["id"] for r in records if r["doc"] == "Doc0"]


def test_claudette_missing_tags_is_an_error(tmp_path):
    _write(tmp_path / "sentences" / "A.txt", "One sentence.\n")
    with pytest.raises(FileNotFoundError):
        load_raw("legal_risk", tmp_path)


def test_ectsum_para_and_documents(raw_dir):
    records = load_raw("fin_summary", raw_dir / "ectsum")
    assert_schema(records, "fin_summary")
    assert len(records) == 13 * 2
    rec = next(r for r in records if r["id"] == "fin_summary:para:T1_q1_2021")
    # repeated key sentences appear once in the input; summary lines are kept as lines
    assert rec["text"] == "Revenue for T1 was $1.1 million in the quarter.\nWe expect growth."
    assert rec["target"] == "q1 revenue $1.1 million.\nsees growth."
    assert rec["doc"] == "T1"
    # one split folder loads only that split
    assert len(load_raw("fin_summary", raw_dir / "ectsum" / "para" / "val")) == 4 * 2
    docs = load_raw("fin_summary", raw_dir / "ectsum" / "final" / "val")
    assert docs == load_ectsum_documents(raw_dir / "ectsum" / "final")
    assert len(docs) == 26 and all(d["id"].startswith("fin_summary:doc:") for d in docs)
    assert company("BRK_B_q1_2021") == "BRK_B"


def test_load_raw_rejects_unknown_task_and_bad_paths(tmp_path):
    with pytest.raises(UnknownTaskError):
        load_raw("no_such_task", tmp_path)
    with pytest.raises(FileNotFoundError):
        load_raw("cs_intent", tmp_path / "absent.csv")
    with pytest.raises(FileNotFoundError):
        load_raw("legal_clause", tmp_path)


def test_truncate_text_cuts_at_a_word():
    assert truncate_text("short", 10) == "short"
    cut = truncate_text("alpha beta gamma delta", 13)
    assert cut == "alpha beta" and len(cut) <= 13


# --- splits ------------------------------------------------------------------------------------


def _grouped(n_groups: int, sizes: int) -> list[dict]:
    return [{"id": f"g{g}:{i}", "doc": f"g{g}", "target": "none" if i % 3 else "x"}
            for g in range(n_groups) for i in range(sizes + g % 4)]


def test_split_by_group_never_cuts_a_document_and_is_deterministic():
    records = _grouped(40, 10)
    first = split_by_group(records, seeded_rng(13, "t", "split"))
    again = split_by_group(list(reversed(records)), seeded_rng(13, "t", "split"))
    assert first == again
    groups = {s: {record_group(r) for r in first[s]} for s in SPLITS}
    assert not groups["train"] & groups["dev"] and not groups["train"] & groups["calibration"]
    assert not groups["dev"] & groups["calibration"]
    assert sum(len(v) for v in first.values()) == len(records)
    assert 0.6 < len(first["train"]) / len(records) < 0.8
    other = split_by_group(records, seeded_rng(14, "t", "split"))
    assert other != first


def test_split_by_group_gives_every_split_a_document_when_there_are_three():
    records = _grouped(3, 50)
    parts = split_by_group(records, seeded_rng(13, "t", "split"))
    assert all(parts[s] for s in SPLITS)


def test_sample_capped_keeps_none_to_half():
    records = [{"id": f"r{i:03d}", "target": "none" if i % 5 else "x"} for i in range(200)]  # 80% none
    rng = random.Random(0)
    for cap in (7, 50, 1000):
        chosen = sample_capped(records, cap, rng, "none")
        n_none = sum(r["target"] == "none" for r in chosen)
        assert len(chosen) <= cap and n_none <= len(chosen) / 2
        assert chosen == sorted(chosen, key=lambda r: r["id"])
    assert len(sample_capped(records, 1000, rng, "none")) == 80  # 40 labelled + 40 none
    assert len(sample_capped(records, 10, rng)) == 10


def _documents(sizes: tuple[int, ...]) -> list[dict]:
    return [{"id": f"g{g}:{i:04d}", "doc": f"g{g}", "text": f"sentence {g} {i}", "target": []}
            for g, size in enumerate(sizes) for i in range(size)]


def test_split_within_documents_is_stratified_contiguous_and_gapped():
    records = _documents((89, 276, 272, 395, 132, 15))  # FIN5's sizes, and one short document
    parts = split_within_documents(records, seeded_rng(13, "t", "split"), block_size=20, gap=1)
    assert parts == split_within_documents(list(reversed(records)), seeded_rng(13, "t", "split"), block_size=20, gap=1)
    split_of = {r["id"]: split for split in SPLITS for r in parts[split]}
    assert len(split_of) == sum(len(v) for v in parts.values())  # no record in two splits
    for g in range(5):  # every document with at least three blocks is in every split
        assert all(any(r["doc"] == f"g{g}" for r in parts[split]) for split in SPLITS)
    assert {split_of.get(f"g5:{i:04d}") for i in range(15)} == {"train"}  # one block: all train
    # an evaluation record's neighbours are in its own split or dropped, never in another split
    for r in records:
        g, i = r["id"].split(":")
        split = split_of.get(r["id"])
        if split in ("calibration", "dev"):
            for j in (int(i) - 1, int(i) + 1):
                assert split_of.get(f"{g}:{j:04d}", split) == split
    # blocks are contiguous: a split changes only at a multiple of the block size (or at a dropped record)
    dropped = [r["id"] for r in records if r["id"] not in split_of]
    assert 0 < len(dropped) < 0.05 * len(records)
    assert all(int(rid.split(":")[1]) % 20 in (0, 19) for rid in dropped)
    assert 0.65 < len(parts["train"]) / len(records) < 0.75
    assert abs(len(parts["calibration"]) - len(parts["dev"])) < 0.05 * len(records)
    assert split_within_documents(records, seeded_rng(14, "t", "split"), block_size=20) != parts


def test_normalised_text_and_training_duplicates():
    assert normalised_text("5 . 2 COLLATERAL .") == normalised_text("5.2  Collateral.") == "5 2 collateral"
    assert normalised_text("Ｆｕｌｌ width") == "full width"  # NFKC
    train = [{"text": "I expect a refund of 1499 dollars"}]
    records = [{"id": "a", "text": "i expect a REFUND of 1499 dollars!"}, {"id": "b", "text": "a refund of 1499 dollars"}]
    assert [r["id"] for r in drop_training_duplicates(records, train)] == ["b"]


def assert_no_training_duplicates(task: str, bench: Path) -> None:
    train = {normalised_text(r["text"]) for r in load_split(task, "train", bench)}
    for split in ("calibration", "dev"):
        repeated = [r["id"] for r in load_split(task, split, bench) if normalised_text(r["text"]) in train]
        assert not repeated, f"{task}/{split} repeats train texts: {repeated[:5]}"


# --- build -------------------------------------------------------------------------------------


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_is_deterministic_and_leak_free(raw_dir, tmp_path):
    manifest = build_benchmark(raw_dir, tmp_path / "a", seed=13)
    build_benchmark(raw_dir, tmp_path / "b", seed=13)
    assert _file_bytes(tmp_path / "a") == _file_bytes(tmp_path / "b")
    bench = tmp_path / "a"
    for task in TASK_NAMES:
        ids, docs = {}, {}
        for split in SPLITS:
            records = load_split(task, split, bench)
            assert len(records) == manifest["counts"][task][split]
            assert records, f"{task}/{split} is empty"
            ids[split] = {r["id"] for r in records}
            docs[split] = {record_group(r) for r in records}
        for a, b in (("train", "dev"), ("train", "calibration"), ("dev", "calibration")):
            assert not ids[a] & ids[b], f"{task}: ids shared by {a} and {b}"
            if task in WITHIN_DOCUMENT_SPLIT:  # every split holds a share of every document
                assert docs[a] == docs[b], f"{task}: {a} and {b} hold other documents"
            else:
                assert not docs[a] & docs[b], f"{task}: documents shared by {a} and {b}"
        assert_no_training_duplicates(task, bench)
        assert (bench / Path(manifest["licences"][task])).is_file()
    documents = load_split("fin_summary", "documents", bench)
    train_docs = {record_group(r) for s in ("train", "calibration") for r in load_split("fin_summary", s, bench)}
    assert documents and not {record_group(r) for r in documents} & train_docs
    assert manifest["seed"] == 13 and manifest["labels"]["cs_intent"][0] == "Refund_not_showing_up"
    assert all(len(entry["sha256"]) == 64 for entries in manifest["sources"].values() for entry in entries)
    assert json.loads((bench / "manifest.json").read_text()) == manifest
    # the fixtures repeat a few texts in every document: those left calibration and dev
    dropped = manifest["dropped_train_duplicates"]
    assert dropped["legal_risk"]["calibration"] + dropped["legal_risk"]["dev"] > 0
    assert dropped["fin_ner"]["calibration"] + dropped["fin_ner"]["dev"] > 0
    assert manifest["within_document_split"] == WITHIN_DOCUMENT_SPLIT
    # another seed gives other splits
    build_benchmark(raw_dir, tmp_path / "c", seed=14)
    assert _file_bytes(tmp_path / "c") != _file_bytes(bench)


def test_stats_rows_and_table(raw_dir, tmp_path):
    build_benchmark(raw_dir, tmp_path, seed=13)
    rows = benchmark_stats(tmp_path)
    assert [(r["task"], r["split"]) for r in rows if r["task"] == "fin_summary"] == [
        ("fin_summary", s) for s in (*SPLITS, "documents")
    ]
    intent = next(r for r in rows if r["task"] == "cs_intent" and r["split"] == "train")
    assert intent["labels"] == 3 and intent["mean_target_chars"] is None and intent["mean_input_chars"] > 0
    response = next(r for r in rows if r["task"] == "cs_response" and r["split"] == "dev")
    assert response["labels"] is None and response["mean_target_chars"] > 0
    table = format_stats_table(rows)
    assert table.splitlines()[0].split()[:3] == ["task", "split", "n"]
    assert len(table.splitlines()) == len(rows) + 1


def test_load_split_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="available"):
        load_split("cs_intent", "dev", tmp_path)


# --- the committed benchmark -------------------------------------------------------------------


def test_committed_benchmark_has_every_task_and_split():
    manifest = json.loads((BENCHMARK_DIR / "manifest.json").read_text(encoding="utf-8"))
    for task in TASK_NAMES:
        seen: set[str] = set()
        for split in (*SPLITS, TRAIN_MORE_SPLIT) if task in TRAIN_MORE_TASKS else SPLITS:
            records = load_split(task, split)
            assert_schema(records, task)
            assert len(records) == manifest["counts"][task][split]
            split_ids = {r["id"] for r in records}
            assert not split_ids & seen, f"{task}/{split} shares ids with another split"
            seen |= split_ids
            if task in ("legal_clause", "legal_risk"):
                assert sum(r["target"] == "none" for r in records) <= len(records) / 2
            if task == "fin_ner":
                assert all(len(r["tokens"]) == len(r["target"]) for r in records)
                assert {r["doc"] for r in records} == {f"FIN5:d{d}" for d in range(1, 6)}
        assert_no_training_duplicates(task, BENCHMARK_DIR)
    size = sum(p.stat().st_size for p in BENCHMARK_DIR.rglob("*") if p.is_file())
    assert size < 15_000_000  # splits ~8.8 MB + the pretraining corpus 3.4 MB (gzip)


def test_train_more_holds_no_confirm_record():
    """The confirm split was drawn from the records no split held; train_more, written after it,
    leaves them out (by id and by normalised text), so confirm stays unseen by every tier."""
    confirm = load_records(BENCHMARK_DIR / CONFIRM_FILE)
    for task in TRAIN_MORE_TASKS:
        more = load_split(task, TRAIN_MORE_SPLIT)
        held = [r for r in confirm if r["task"] == task]
        assert held and more
        assert not {r["id"] for r in more} & {r["id"] for r in held}
        assert not {normalised_text(r["text"]) for r in more} & {normalised_text(r["text"]) for r in held}


def test_load_records_reads_a_jsonl_file():
    path = BENCHMARK_DIR / "cs_intent" / "dev.jsonl"
    assert load_records(path) == load_split("cs_intent", "dev")


needs_raw = pytest.mark.skipif(not (shared_data_dir() / "banking77").is_dir(), reason="raw data (/work/shared/data) absent")


@needs_raw
def test_committed_benchmark_rebuilds_byte_identical(tmp_path):
    manifest = json.loads((BENCHMARK_DIR / "manifest.json").read_text(encoding="utf-8"))
    build_benchmark(shared_data_dir(), tmp_path, seed=manifest["seed"])
    # README.md is written by hand; confirm.jsonl is drawn by clients.confirm_eval, not by the build
    committed = {k: v for k, v in _file_bytes(BENCHMARK_DIR).items() if k not in ("README.md", "confirm.jsonl")}
    assert _file_bytes(tmp_path) == committed


@needs_raw
def test_real_raw_data_loads():
    raw = shared_data_dir()
    assert len(load_raw("cs_intent", raw / "banking77")) > 10_000
    assert len(load_raw("legal_risk", raw / "claudette")) > 10_000
    assert len(load_raw("fin_ner", raw / "fin_ner")) > 1_000


# --- convert and UTF-8 -------------------------------------------------------------------------


def test_data_convert_writes_every_raw_record_unsplit(raw_dir, tmp_path, capsys):
    from routenlp.cli import main

    before = _file_bytes(BENCHMARK_DIR)
    out = tmp_path / "converted" / "test.jsonl"
    assert main(["data", "convert", "--task", "cs_intent", "--raw", str(raw_dir / "banking77" / "train.csv"), "--out", str(out)]) == 0
    assert load_records(out) == load_raw("cs_intent", raw_dir / "banking77" / "train.csv")  # all 30, in order
    assert "wrote 30 cs_intent records" in capsys.readouterr().out
    main(["data", "convert", "--task", "legal_risk", "--raw", str(raw_dir / "claudette"), "--out", str(out)])
    assert load_records(out) == load_raw("legal_risk", raw_dir / "claudette")  # "none" not cut to half
    with pytest.raises(SystemExit, match="inside"):
        main(["data", "convert", "--task", "cs_intent", "--raw", str(raw_dir / "banking77"), "--out", str(BENCHMARK_DIR / "cs_intent" / "test.jsonl")])
    with pytest.raises(SystemExit, match="no such file"):
        main(["data", "convert", "--task", "cs_intent", "--raw", str(tmp_path / "absent.csv"), "--out", str(out)])
    assert _file_bytes(BENCHMARK_DIR) == before


def test_jsonl_readers_are_utf8_whatever_the_locale(tmp_path):
    """Benchmark files, --data files and answers tables hold non-ASCII text (CUAD, Bitext): read
    under an ASCII locale, every reader must still decode them as UTF-8."""
    import subprocess
    import sys

    record = {"id": "cs_intent:x:0", "task": "cs_intent", "text": "café refund € ✓", "target": "a"}
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    answers = tmp_path / "build" / "answers" / "dev.jsonl"
    answers.parent.mkdir(parents=True)
    answers.write_text(json.dumps({"id": "x", "tier": "t2", "prediction": "é"}, ensure_ascii=False) + "\n", encoding="utf-8")
    text = ascii(record["text"])  # the script itself stays ASCII: argv is decoded with the locale too
    script = f"""
import argparse
from pathlib import Path
from routenlp.commands.bench_cmd import load_records as bench_records
from routenlp.data import load_records
from export.pipeline import PortfolioBuild
from routenlp.portfolio import load_portfolio
assert load_records({str(data)!r})[0]["text"] == {text}
assert bench_records(argparse.Namespace(data=Path({str(data)!r}), split="dev", per_task=0, seed=0))[0]["text"] == {text}
build = PortfolioBuild(load_portfolio(profile="tiny"), root=Path({str(answers.parent.parent)!r}), progress=False)
assert build.load_answers("dev")["x"]["t2"]["prediction"] == {ascii("é")}
"""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, encoding="utf-8")
    assert done.returncode == 0, done.stderr[-2000:]
