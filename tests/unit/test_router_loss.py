import math

import numpy as np
import pytest
import torch

from export.router_loss import T4_TOLERANCE, example_bars, oracle_labels, passing_labels, router_loss

PRICES = torch.tensor([0.01, 0.10, 0.80, 8.00])


def test_oracle_label_is_the_cheapest_tier_meeting_the_bar():
    quality = torch.tensor(
        [
            [0.95, 0.99, 1.00, 1.00],  # T1 already meets the bar
            [0.50, 0.90, 0.90, 1.00],  # exactly at the bar counts; the T2/T3 tie goes to the cheaper T2
            [0.10, 0.20, 0.88, 0.70],  # T3 passes, T4 does not: still T3
            [0.10, 0.20, 0.30, 0.40],  # nothing passes: the best answer, T4's
            [0.90, 0.90, 0.90, 0.90],  # all tie at the bar: T1
            [0.00, 0.00, 0.00, 0.00],  # every tier wrong: the cheapest of equals, T1
            [-1.0, 0.30, 0.60, 0.50],  # nothing passes, T1 cannot serve: T3 answered best
        ]
    )
    bar = torch.tensor([0.9, 0.9, 0.88, 0.9, 0.9, 0.5, 0.7])
    assert oracle_labels(quality, bar).tolist() == [0, 1, 2, 3, 0, 0, 2]


def test_oracle_labels_reject_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        oracle_labels(torch.zeros(3, 4), torch.zeros(2))


def test_example_bars_compare_generation_answers_with_t4():
    records = [{"task": "legal_risk"}, {"task": "cs_response"}, {"task": "fin_summary"}]
    quality = np.array([[1.0, 0.0, 0.0, 1.0], [-1.0, 0.30, 0.25, 0.31], [-1.0, 0.10, 0.40, 0.50]], dtype=np.float32)
    bars = example_bars(records, quality, {"legal_risk": 0.6, "cs_response": 0.9, "fin_summary": 0.9})
    # structured: the task's bar; generation: T4's own quality less the tolerance, not the corpus bar
    assert bars.tolist() == pytest.approx([0.6, 0.31 - T4_TOLERANCE, 0.50 - T4_TOLERANCE])
    passing = passing_labels(torch.from_numpy(quality), torch.from_numpy(bars))
    assert passing.tolist() == [[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 1]]


def test_uniform_logits_hand_computed_terms():
    logits = torch.zeros(2, 4)  # p = 1/2 per tier
    quality = torch.tensor([[0.5, 0.7, 0.9, 1.0], [0.2, 0.2, 0.95, 0.99]])
    bar = torch.tensor([0.8, 0.9])
    total, parts = router_loss(logits, PRICES, quality, bar)
    assert parts["route"].item() == pytest.approx(math.log(2), abs=1e-6)
    # missed savings: passing tiers T3, T4 in both rows: 1/2 * (1 - 0.8/8) + 1/2 * 0 = 0.45
    assert parts["cost"].item() == pytest.approx(0.45, abs=1e-6)
    # Example 1: 1/2 * (0.3 + 0.1) = 0.2; example 2: 1/2 * (0.7 + 0.7) = 0.7; mean 0.45.
    assert parts["quality"].item() == pytest.approx(0.45, abs=1e-6)
    assert total.item() == pytest.approx(math.log(2) + 0.3 * 0.45 + 0.5 * 0.45, abs=1e-6)


def test_confident_logits_hand_computed_terms_and_weights():
    # p = [0.2, 0.5, 0.8, 0.8]
    logits = torch.logit(torch.tensor([[0.2, 0.5, 0.8, 0.8]]))
    quality = torch.tensor([[0.2, 0.9, 0.9, 0.95]])
    bar = torch.tensor([0.8])
    prices = torch.tensor([1.0, 2.0, 4.0, 8.0])
    total, parts = router_loss(logits, prices, quality, bar, cost_weight=2.0, quality_weight=3.0)
    route = -(math.log(0.8) + math.log(0.5) + math.log(0.8) + math.log(0.8)) / 4
    assert parts["route"].item() == pytest.approx(route, abs=1e-5)
    # passing T2, T3, T4: 0.5 * (1 - 2/8) + 0.2 * (1 - 4/8) + 0.2 * 0 = 0.475
    assert parts["cost"].item() == pytest.approx(0.475, abs=1e-6)
    assert parts["quality"].item() == pytest.approx(0.2 * 0.6, abs=1e-6)  # only T1 fails
    assert total.item() == pytest.approx(route + 2.0 * 0.475 + 3.0 * 0.12, abs=1e-5)


def test_per_example_costs_are_normalised_per_example():
    logits = torch.zeros(2, 4)
    costs = torch.tensor([[1.0, 2.0, 4.0, 8.0], [10.0, 10.0, 10.0, 20.0]])
    _, parts = router_loss(logits, costs, torch.ones(2, 4), torch.zeros(2))
    # Row 1: 1/2 * (7/8 + 6/8 + 4/8 + 0) = 1.0625; row 2: 1/2 * (0.5 + 0.5 + 0.5 + 0) = 0.75.
    assert parts["cost"].item() == pytest.approx((1.0625 + 0.75) / 2, abs=1e-6)
    assert parts["quality"].item() == 0.0  # every tier meets a zero bar


def test_zero_weights_leave_only_the_route_term():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    quality = torch.rand(5, 4, generator=torch.Generator().manual_seed(1))
    total, parts = router_loss(logits, PRICES, quality, torch.full((5,), 0.7), 0.0, 0.0)
    assert total.item() == pytest.approx(parts["route"].item())
    assert parts["cost"].item() > 0 and parts["quality"].item() > 0


def test_quality_gradient_lowers_failing_tiers_only():
    logits = torch.zeros(1, 4, requires_grad=True)
    quality = torch.tensor([[0.3, 0.6, 0.95, 0.99]])  # T1, T2 fail a 0.9 bar
    _, parts = router_loss(logits, PRICES, quality, torch.tensor([0.9]))
    parts["quality"].backward()
    grad = logits.grad[0]
    # Gradient descent lowers the logits of failing tiers, the worse one harder; passing ones untouched.
    assert grad[0] > grad[1] > 0
    assert grad[2] == 0 and grad[3] == 0


def test_cost_gradient_raises_cheap_passing_tiers_most():
    logits = torch.zeros(1, 4, requires_grad=True)
    _, parts = router_loss(logits, PRICES, torch.ones(1, 4), torch.zeros(1))
    parts["cost"].backward()
    grad = logits.grad[0]
    assert grad[3] == 0 and torch.all(grad[:3] < 0)
    assert torch.all(grad[:-1] < grad[1:])  # cheaper passing tier, larger push up


def test_descent_on_the_total_loss_separates_passing_from_failing_tiers():
    logits = torch.zeros(4, 4, requires_grad=True)
    quality = torch.tensor([[0.1, 0.2, 0.95, 0.99]]).repeat(4, 1)
    bar = torch.full((4,), 0.9)
    optimizer = torch.optim.SGD([logits], lr=1.0)
    for _ in range(200):
        total, _ = router_loss(logits, PRICES, quality, bar)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    probs = logits.sigmoid()
    assert torch.all(probs[:, :2] < 0.1) and torch.all(probs[:, 2:] > 0.9)
    assert oracle_labels(quality, bar).tolist() == [2, 2, 2, 2]


def test_shape_errors_are_loud():
    with pytest.raises(ValueError, match="tier_cost"):
        router_loss(torch.zeros(2, 4), torch.ones(3), torch.ones(2, 4), torch.ones(2))
    with pytest.raises(ValueError, match="tier_quality"):
        router_loss(torch.zeros(2, 4), PRICES, torch.ones(2, 3), torch.ones(2))
