"""The ledger's hold per request: every tier a request may reach, at its longest prompt + answer."""

from __future__ import annotations

import pytest

from gateway.errors import from_triton
from gateway.pricing import RETOKENISE_SLACK, max_cost
from tests.unit.test_service import PRICES, make_config

DECODER_TOKENS = 24 + 8 + RETOKENISE_SLACK  # max_input_tokens + max_answer_tokens + slack


def test_max_cost_covers_every_tier_up_to_max_tier():
    config = make_config()
    assert max_cost(config, "cs_intent", "t1") == pytest.approx(PRICES["t1"] * 32 / 1000)
    assert max_cost(config, "cs_intent", "t2") == pytest.approx((PRICES["t1"] * 32 + PRICES["t2"] * DECODER_TOKENS) / 1000)
    generation = sum(PRICES[t] for t in ("t2", "t3", "t4")) * DECODER_TOKENS / 1000
    assert max_cost(config, "cs_response") == pytest.approx(generation)
    assert max_cost(config, "cs_response", policy="always-t2") == pytest.approx(PRICES["t2"] * DECODER_TOKENS / 1000)
    # requests the BLS will refuse still get a hold that covers anything (released after the 400)
    assert max_cost(config, "no_such_task") == max_cost(config, "cs_intent")  # T1 + T2-T4
    assert max_cost(config, "cs_intent", "t9") == max_cost(config, "cs_intent", "t4")


@pytest.mark.parametrize(
    "status, http",
    [("StatusCode.INVALID_ARGUMENT", 400), ("StatusCode.UNAVAILABLE", 503), ("StatusCode.DEADLINE_EXCEEDED", 503), ("StatusCode.INTERNAL", 500), (None, 500)],
)
def test_triton_status_maps_to_openai_http_status(status, http):
    error = from_triton(status, "routenlp: TEXT is empty")
    assert error.status == http and error.message == "routenlp: TEXT is empty"
