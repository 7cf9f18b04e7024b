"""The most one request can cost: what the ledger reserves before the request is sent.

A request is billed per tier it reached (cascade.Stage.cost = tokens x price per 1K). The worst
case calls every tier it may reach (all servable tiers up to MAX_TIER: escalations climb, and a
failed tier falls back to the others) with the longest input and answer each one allows:
  T1: the head's max_len tokens (the text is cut there);
  T2-T4: max_input_tokens (prompts are cut from the left to it) + max_answer_tokens.
T4's prompt is cut with the shared tokenizer and re-tokenised by the endpoint, which can count a
few tokens more, hence RETOKENISE_SLACK.
"""

from __future__ import annotations

from bls_router.service import allowed_tiers
from routenlp_core.cascade import TIERS
from routenlp_core.contract import FIXED_TIER_POLICIES
from routenlp_core.serving_config import ServingConfig

RETOKENISE_SLACK = 16  # tokens per decoder call


def tier_max_tokens(config: ServingConfig, task: str, tier: str) -> int:
    if tier == "t1":
        return config.t1[task].max_len
    return config.max_input_tokens + config.max_answer_tokens + RETOKENISE_SLACK


def max_cost(config: ServingConfig, task: str, max_tier: str | None = None, policy: str | None = None) -> float:
    """Dollars; an unknown task, tier or policy gets the most any request of the config can cost
    (the BLS refuses such a request anyway, and the hold is released)."""
    if task not in config.tasks:
        return max(max_cost(config, name) for name in config.tasks)
    tier = (max_tier or "").strip().lower() or TIERS[-1]
    if tier not in TIERS:
        tier = TIERS[-1]
    fixed = FIXED_TIER_POLICIES.get((policy or "").strip().lower())
    if fixed is not None and TIERS.index(fixed) < TIERS.index(tier):
        tier = fixed  # a fixed tier never escalates past itself (it may still fall back below)
    tiers = allowed_tiers(task, tier, config) or allowed_tiers(task, TIERS[-1], config)
    return sum(config.prices[t] * tier_max_tokens(config, task, t) / 1000.0 for t in tiers)
