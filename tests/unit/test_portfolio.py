import tomllib

import pytest

from routenlp.portfolio import DEFAULT_PORTFOLIO, PortfolioError, load_portfolio, parse_portfolio
from routenlp_core.tasks import UnknownTaskError


def _raw():
    return tomllib.loads(DEFAULT_PORTFOLIO.read_text())


def test_default_portfolio_has_four_priced_tiers_and_all_tasks():
    portfolio = load_portfolio()
    assert [t.name for t in portfolio.ordered_tiers()] == ["t1", "t2", "t3", "t4"]
    assert [t.price_per_1k_tokens for t in portfolio.ordered_tiers()] == [0.01, 0.10, 0.80, 8.00]
    assert [t.kind for t in portfolio.ordered_tiers()] == ["onnx", "vllm", "vllm", "openai"]
    assert portfolio.tiers["t4"].api_key_env == "ROUTENLP_T4_API_KEY"
    assert portfolio.tasks["fin_summary"].paper_bar == 0.42
    assert portfolio.router.cost_weight == 0.3 and portfolio.router.quality_weight == 0.5


def test_profile_overrides_merge_into_tiers_without_touching_the_rest():
    tiny, default = load_portfolio(profile="tiny"), load_portfolio(profile="default")
    assert tiny.tiers["t2"].arch["hidden"] < default.tiers["t2"].arch["hidden"]
    assert tiny.tiers["t2"].arch["family"] == "mistral"  # kept from the base description
    assert tiny.tiers["t2"].price_per_1k_tokens == default.tiers["t2"].price_per_1k_tokens
    assert tiny.profile.max_train_per_task < default.profile.max_train_per_task


def test_tier_cost_and_effective_bar():
    portfolio = load_portfolio()
    assert portfolio.tiers["t4"].cost(500) == pytest.approx(4.0)  # 500 tokens at $8 / 1K
    policy = portfolio.tasks["cs_intent"]  # paper bar 0.92, relative 0.9
    assert policy.effective_bar({"t1": 0.5, "t4": 0.95}) == 0.92
    assert policy.effective_bar({"t1": 0.4, "t4": 0.5}) == pytest.approx(0.45)
    # a from-scratch T4 below a cheaper tier: the bar follows the best tier, never drops to 0
    assert policy.effective_bar({"t1": 0.6, "t2": 0.1, "t4": 0.0}) == pytest.approx(0.54)
    assert policy.effective_bar({}) == 0.92
    assert policy.bar_source(0.92) == "paper"
    assert "best tier" in policy.bar_source(0.54)


def test_each_task_has_a_cascade_risk_level():
    portfolio = load_portfolio(profile="tiny")
    assert {task: policy.alpha for task, policy in portfolio.tasks.items()} == dict.fromkeys(portfolio.tasks, 0.05)


def test_tier_training_settings_merge_per_profile():
    default = load_portfolio(profile="default")
    assert default.tiers["t4"].train["lr"] < default.tiers["t2"].train.get("lr", 3e-3)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda raw: raw["tiers"]["t2"].update(kind="triton"), "kind 'triton' is not one of onnx, vllm, openai"),
        (lambda raw: raw["tiers"].pop("t3"), "tiers t3 missing"),
        (lambda raw: raw["tasks"].pop("fin_ner"), "tasks fin_ner have no"),
        (lambda raw: raw["tiers"]["t4"].update(train={"momentum": 0.9}), r"unknown train setting\(s\) momentum"),
        (lambda raw: raw["tiers"]["t1"].update(colour="red"), "unknown field"),
        (lambda raw: raw["tiers"]["t1"].update(price_per_1k_tokens=-1), "must be >= 0"),
        (lambda raw: raw["tasks"]["legal_risk"].update(alpha=1.5), r"tasks.legal_risk.alpha = 1.5 must be in \(0, 1\)"),
    ],
)
def test_bad_portfolios_name_the_problem(mutate, message, tmp_path):
    raw = _raw()
    mutate(raw)
    with pytest.raises(PortfolioError, match=message):
        parse_portfolio(raw, "default", tmp_path / "p.toml")


def test_unknown_profile_and_task():
    with pytest.raises(PortfolioError, match="valid profiles: tiny, default"):
        load_portfolio(profile="huge")
    raw = _raw()
    raw["tasks"]["weather"] = raw["tasks"]["cs_intent"]
    with pytest.raises(UnknownTaskError):
        parse_portfolio(raw, "default", DEFAULT_PORTFOLIO)


def test_a_pricier_decoder_tier_gets_more_passes_in_the_default_profile():
    default = load_portfolio(profile="default")

    def passes(tier: str) -> int:  # its own passes plus those of the tier it starts from
        train = default.tiers[tier].train
        return sum(train["task_repeats"].values()) + (passes(train["init_from"]) if "init_from" in train else 0)

    repeats = [passes(t) for t in ("t2", "t3", "t4")]
    assert repeats[0] < repeats[1] and repeats[0] < repeats[2], repeats


def test_task_repeats_name_known_tasks(tmp_path):
    raw = _raw()
    raw["tiers"]["t2"]["train"] = {"task_repeats": {"cs_intnet": 2}}
    with pytest.raises(UnknownTaskError, match="valid tasks"):
        parse_portfolio(raw, "default", tmp_path / "p.toml")


def test_decoder_pairs_repeat_each_task_as_configured():
    from export.pipeline import PortfolioBuild

    build = PortfolioBuild(load_portfolio(profile="tiny"), progress=False)
    once = build.decoder_pairs(max_per_task=5, task_repeats={})
    twice = build.decoder_pairs(max_per_task=5, task_repeats={"cs_intent": 2})
    assert len(twice) == len(once) + 5
    assert sum(p.startswith("task: cs_intent") for p, _ in twice) == 10


def test_train_more_adds_the_rest_of_a_tasks_portion_to_one_tier_only():
    from export.pipeline import PortfolioBuild
    from routenlp.data import load_split

    build = PortfolioBuild(load_portfolio(profile="default"), progress=False)
    t2, t4 = build.decoder_data("t2"), build.decoder_data("t4")
    assert "train_more" not in t2 and t4["train_more"] == ["cs_intent", "legal_clause"]
    more = load_split("cs_intent", "train_more")
    base = build.decoder_pairs(max_per_task=5, task_repeats={"cs_intent": 2})
    extended = build.decoder_pairs(max_per_task=5, task_repeats={"cs_intent": 2}, train_more=["cs_intent"])
    assert len(extended) == len(base) + 2 * len(more)
    train_ids = {r["id"] for r in load_split("cs_intent", "train")}
    assert not train_ids & {r["id"] for r in more}  # the rest of the portion, not the split again


def test_train_more_of_a_task_without_the_split_is_refused(tmp_path):
    from export.pipeline import PortfolioBuild

    raw = tomllib.loads(DEFAULT_PORTFOLIO.read_text(encoding="utf-8"))
    raw["tiers"]["t4"]["train"]["train_more"] = ["fin_ner"]
    build = PortfolioBuild(parse_portfolio(raw, "tiny", tmp_path / "p.toml"), progress=False)
    with pytest.raises(ValueError, match="no such split"):
        build.decoder_data("t4")
    raw["tiers"]["t4"]["train"]["train_more"] = ["no_such_task"]
    with pytest.raises(UnknownTaskError):
        parse_portfolio(raw, "tiny", tmp_path / "p.toml")
