"""Bring your own tier: a portfolio whose T2 is a Hugging Face checkpoint folder with a tokenizer of
its own (not the project's), built here by the test, goes through export, calibration, serving
and routing by configuration only.

A GPU site does the same with Mistral-7B: `checkpoint = "/models/Mistral-7B-Instruct"` under
[tiers.t2] (README "Use your own models and data").
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from export.decoder import DecoderArch, build_decoder, save_decoder
from export.pipeline import PortfolioBuild
from export.repository_builder import write_repository
from export.train_decoder import train_decoder
from routenlp.deployment import Deployment
from routenlp.portfolio import DEFAULT_PORTFOLIO, load_portfolio
from routenlp_core.answers import format_target, prompt_text
from routenlp_core.tasks import TASK_NAMES
from tests.integration.test_bls_routing import START_TIMEOUT_S, route

pytestmark = pytest.mark.integration

# Special tokens and a vocabulary size the project's tokenizer does not use.
OWN_SPECIALS = {"bos_token": "<|begin|>", "eos_token": "<|end|>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"}
OWN_VOCAB = 700


def _own_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=OWN_SPECIALS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=OWN_VOCAB, special_tokens=list(OWN_SPECIALS.values())))
    bos = OWN_SPECIALS["bos_token"]
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, backend.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **OWN_SPECIALS)


@pytest.fixture(scope="module")
def own_t2(tiny_build, tmp_path_factory) -> Path:
    """A small Llama checkpoint with its own tokenizer, trained briefly on the tiny pool."""
    records = tiny_build.pools.flat("tier_train", 40)
    pairs = [(prompt_text(r), format_target(r)) for r in records]
    tokenizer = _own_tokenizer([p + " " + a for p, a in pairs])
    model = build_decoder(DecoderArch(family="llama", hidden=64, layers=1, heads=2, kv_heads=1, intermediate=128), tokenizer)
    train_decoder(model, tokenizer, pairs, epochs=1, batch_size=16, lr=3e-3, max_len=144, seed=0, progress=False)
    folder = tmp_path_factory.mktemp("own_t2") / "checkpoint"
    save_decoder(model, tokenizer, folder, {"tier": "t2", "note": "brought by the site (test)"})
    return folder


def _portfolio_with_t2(checkpoint: Path, out: Path) -> Path:
    """default.toml with only [tiers.t2] changed: checkpoint = the folder (a user's one-line edit)."""
    text = DEFAULT_PORTFOLIO.read_text()
    section = re.search(r"\[tiers\.t2\].*?(?=\n\[)", text, re.S)
    edited = section.group(0).replace('checkpoint = ""', f'checkpoint = "{checkpoint}"', 1)
    assert edited != section.group(0), "default.toml's [tiers.t2] has no checkpoint field to set"
    text = text.replace(section.group(0), edited)
    # T3 is grown from a trained-here T2 by default; with T2 brought in, T3 trains from its arch.
    grown = 'train = { lr = 1e-3, init_from = "t2" }'
    assert grown in text, "default.toml's [tiers.t3] no longer grows from t2 as this test expects"
    out.write_text(text.replace(grown, "train = { lr = 1e-3 }"))
    return out


@pytest.fixture(scope="module")
def own_build(tiny_build, own_t2, tmp_path_factory) -> PortfolioBuild:
    root = tmp_path_factory.mktemp("own_build")
    portfolio = load_portfolio(_portfolio_with_t2(own_t2, root / "portfolio.toml"), profile="tiny")
    # Start from the tiny build's cache: tokenizer and T1 are unchanged; T3 (now from its arch), T4
    # (grown from T3), the answers, router and everything after them are rebuilt.
    shutil.copytree(tiny_build.root, root / "build")
    build = PortfolioBuild(portfolio, root=root / "build", progress=False)
    build.steps = build.run()
    return build


def test_the_build_answers_with_the_checkpoints_own_tokenizer(own_build, own_t2, tiny_build):
    assert own_build.decoder_dir("t2") == own_t2
    assert own_build.cache.key("answers") != tiny_build.cache.key("answers")
    assert "decoders/t2" not in own_build.steps["stage_build_seconds"]
    t2_answers = [row["t2"] for row in own_build.load_answers("dev").values()]
    assert len(t2_answers) == len(own_build.pools.flat("dev"))
    # Billed tokens are counted with T2's own tokenizer (its BOS is <|begin|>, not the project's <s>).
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(str(own_t2))
    record = own_build.pools.flat("dev")[0]
    row = own_build.load_answers("dev")[record["id"]]["t2"]
    assert row["tokens"] >= len(own(prompt_text(record))["input_ids"])
    assert own.bos_token == "<|begin|>" and len(own) != len(tiny_build.tokenizer())


def test_the_served_t2_is_the_checkpoint_and_routes(own_build, own_t2, tmp_path):
    repository = tmp_path / "model_repository"
    written = write_repository(own_build, repository, target="cpu")
    engine_args = json.loads((repository / "t2" / str(written["model_versions"]["t2"]) / "model.json").read_text())
    assert Path(engine_args["model"]).resolve() == own_t2.resolve()
    deployment = Deployment(repository, state_dir=tmp_path / "state")
    try:
        deployment.start(timeout_s=START_TIMEOUT_S)
        client = grpcclient.InferenceServerClient(deployment.server.grpc_url)
        dev = own_build.pools.dev
        for task in TASK_NAMES:
            record = dev[task][0]
            output, meta, _ = route(client, record["text"], task, policy="always-t2")
            assert meta["tier"] == "t2" and meta["path"] == ["t2"], meta
            assert output is not None and not meta.get("fallback"), meta
            output, meta, _ = route(client, record["text"], task)
            assert meta["task"] == task and meta["tier"] in ("t1", "t2", "t3", "t4"), meta
        client.close()
    finally:
        deployment.stop()
