"""T3 grown from T2: the upcycled mixture computes exactly what the dense model does until trained."""

import pytest
import torch

from export.decoder import DecoderArch, build_decoder
from export.upcycle import upcycle
from export.tokenizer import train_tokenizer
from routenlp.portfolio import PortfolioError, load_portfolio, parse_portfolio

DENSE = DecoderArch(family="mistral", hidden=64, layers=2, heads=2, kv_heads=1, intermediate=96)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"task: cs_intent text: card {i} answer: card_arrival" for i in range(50)], 300)


def test_an_upcycled_mixture_answers_exactly_like_its_dense_source(tokenizer):
    torch.manual_seed(0)
    dense = build_decoder(DENSE, tokenizer).eval()
    moe = upcycle(dense, DecoderArch(**{**DENSE.__dict__, "family": "mixtral", "experts": 4, "experts_per_token": 2}), tokenizer).eval()
    moe.config.output_router_logits = False
    ids = torch.randint(4, len(tokenizer), (3, 11))
    with torch.no_grad():
        assert torch.equal(dense(ids).logits, moe(ids).logits)
    assert sum(p.numel() for p in moe.parameters()) > sum(p.numel() for p in dense.parameters())


def test_upcycling_refuses_a_different_shape(tokenizer):
    dense = build_decoder(DENSE, tokenizer)
    with pytest.raises(ValueError, match="intermediate 128 vs 96"):
        upcycle(dense, DecoderArch(**{**DENSE.__dict__, "family": "mixtral", "intermediate": 128}), tokenizer)


def test_init_from_must_name_a_cheaper_decoder_tier(tmp_path):
    import tomllib

    from routenlp.portfolio import DEFAULT_PORTFOLIO

    raw = tomllib.loads(DEFAULT_PORTFOLIO.read_text())
    raw["tiers"]["t2"]["train"] = {"init_from": "t3"}
    with pytest.raises(PortfolioError, match="must name a cheaper decoder tier"):
        parse_portfolio(raw, "default", tmp_path / "p.toml")
    assert load_portfolio(profile="default").tiers["t3"].train["init_from"] == "t2"


def test_a_deeper_grown_model_answers_exactly_like_its_source(tokenizer):
    from export.grow import grow

    torch.manual_seed(1)
    dense = build_decoder(DENSE, tokenizer).eval()
    deeper = DecoderArch(**{**DENSE.__dict__, "family": "mixtral", "layers": 4, "experts": 2})
    grown = grow(dense, deeper, tokenizer).eval()
    grown.config.output_router_logits = False
    ids = torch.randint(4, len(tokenizer), (2, 9))
    with torch.no_grad():
        assert torch.equal(dense(ids).logits, grown(ids).logits)
    assert grown.config.num_hidden_layers == 4
    with pytest.raises(ValueError, match="never drops layers"):
        grow(grown, DecoderArch(**{**deeper.__dict__, "layers": 3}), tokenizer)
