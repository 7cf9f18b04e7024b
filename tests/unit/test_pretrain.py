"""Pretraining a decoder tier on the in-domain corpus: full blocks, a seeded order, a lower LM loss,
the portfolio setting validated, and the committed corpus free of every benchmark text."""

import json

import pytest
import torch

from export.decoder import DecoderArch, build_decoder
from export.pretrain import corpus_blocks, pretrain_decoder
from export.tokenizer import train_tokenizer
from routenlp.data.corpus import CORPUS_DIR, CORPUS_MANIFEST, corpus_digest, load_corpus
from routenlp.data.records import CONFIRM_FILE, load_records
from routenlp.data.splits import normalised_text
from routenlp.portfolio import PortfolioError, parse_portfolio
from routenlp_core.paths import BENCHMARK_DIR

CLAUSES = [
    "The Licensee shall pay the Licensor a royalty of {n} percent of net sales within thirty days.",
    "This Agreement shall be governed by the laws of the State of New York, without regard to conflicts of law.",
    "Neither party may assign this Agreement without the prior written consent of the other party.",
    "We may terminate your account at any time for any reason without notice.",
]
TEXTS = ["\n".join(c.format(n=i % 9) for c in CLAUSES[i % 4 :] + CLAUSES[: i % 4]) for i in range(40)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, 300)


def _lm_loss(model, blocks) -> float:
    ids = torch.tensor(blocks)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_corpus_blocks_are_full_seeded_and_keep_every_document(tokenizer):
    blocks = corpus_blocks(tokenizer, TEXTS, 32, seed=0)
    assert blocks and all(len(b) == 32 for b in blocks)
    assert blocks == corpus_blocks(tokenizer, TEXTS, 32, seed=0)
    assert blocks != corpus_blocks(tokenizer, TEXTS, 32, seed=1)
    stream = sum(len(ids) + 1 for ids in tokenizer(TEXTS, add_special_tokens=False)["input_ids"])
    assert len(blocks) == stream // 32  # every full block of the joined stream, the tail dropped
    assert sum(b.count(tokenizer.eos_token_id) for b in blocks) >= len(TEXTS) - 2


def test_pretraining_lowers_the_lm_loss_and_respects_the_token_budget(tokenizer):
    torch.manual_seed(0)
    model = build_decoder(DecoderArch(family="mistral", hidden=32, layers=1, heads=1, kv_heads=1, intermediate=64), tokenizer)
    held = corpus_blocks(tokenizer, TEXTS, 32, seed=5)[:8]
    before = _lm_loss(model, held)
    stats = pretrain_decoder(model, tokenizer, TEXTS, tokens=32 * 48, block_len=32, batch_size=4, lr=3e-3, seed=0, progress=False)
    assert stats["tokens_seen"] == 32 * 48 and stats["steps"] == 12
    assert stats["corpus_tokens"] >= stats["tokens_seen"]
    assert _lm_loss(model, held) < before - 0.4  # 5.72 -> 5.03 here


def test_a_budget_beyond_the_corpus_is_one_pass(tokenizer):
    model = build_decoder(DecoderArch(family="mistral", hidden=32, layers=1, heads=1, kv_heads=1, intermediate=64), tokenizer)
    stats = pretrain_decoder(model, tokenizer, TEXTS, tokens=10**9, block_len=32, batch_size=8, lr=1e-3, seed=0, progress=False)
    assert stats["tokens_seen"] == stats["corpus_tokens"]


@pytest.mark.parametrize("bad", [{"tokens": 0}, {"tokens": 100, "epochs": 2}, "lots"])
def test_pretrain_setting_is_validated(bad, tmp_path):
    import tomllib

    from routenlp.portfolio import DEFAULT_PORTFOLIO

    raw = tomllib.loads(DEFAULT_PORTFOLIO.read_text())
    raw["tiers"]["t4"]["train"] = {**raw["tiers"]["t4"]["train"], "pretrain": bad}
    with pytest.raises(PortfolioError, match="pretrain must be a table"):
        parse_portfolio(raw, "default", tmp_path / "p.toml")


def test_committed_corpus_holds_no_benchmark_text():
    """No text of any committed split, train_more, the documents set or the confirm split is in the
    corpus (the build drops them by normalised text), and its manifest matches the file."""
    corpus = load_corpus()
    manifest = json.loads((BENCHMARK_DIR / CORPUS_DIR / CORPUS_MANIFEST).read_text(encoding="utf-8"))
    assert manifest["sha256"] == corpus_digest() and manifest["documents"] == len(corpus)
    assert {"legal_clause", "legal_risk"} <= {d["task"] for d in corpus}
    lines = {normalised_text(line) for d in corpus for line in d["text"].split("\n")}
    records = [r for path in BENCHMARK_DIR.glob("*/*.jsonl") for r in load_records(path)] + load_records(BENCHMARK_DIR / CONFIRM_FILE)
    assert len(records) > 20_000
    leaked = [r["id"] for r in records if "\n" not in r["text"] and normalised_text(r["text"]) in lines]
    assert not leaked, f"benchmark records in the corpus: {leaked[:5]}"
