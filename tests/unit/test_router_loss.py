import math

import pytest
import torch

from export.router_loss import oracle_labels, router_loss

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


def test_uniform_logits_hand_computed_terms():
    logits = torch.zeros(2, 4)
    quality = torch.tensor([[0.5, 0.7, 0.9, 1.0], [0.2, 0.2, 0.95, 0.99]])
    bar = torch.tensor([0.8, 0.9])
    oracle = torch.tensor([2, 2])
    total, parts = router_loss(logits, oracle, PRICES, quality, bar)
    # p = 1/4 everywhere. CE = ln 4.
    assert parts["route"].item() == pytest.approx(math.log(4), abs=1e-6)
    # E_p[c / max c] = (0.01 + 0.1 + 0.8 + 8) / 8 / 4 = 0.2784375 for both examples.
    assert parts["cost"].item() == pytest.approx(0.2784375, abs=1e-6)
    # Example 1: 1/4 * (0.3 + 0.1) = 0.1; example 2: 1/4 * (0.7 + 0.7) = 0.35; mean 0.225.
    assert parts["quality"].item() == pytest.approx(0.225, abs=1e-6)
    assert total.item() == pytest.approx(math.log(4) + 0.3 * 0.2784375 + 0.5 * 0.225, abs=1e-6)


def test_skewed_logits_hand_computed_terms_and_weights():
    # p = [1/8, 1/8, 2/8, 4/8]
    logits = torch.log(torch.tensor([[1.0, 1.0, 2.0, 4.0]]))
    quality = torch.tensor([[0.2, 0.5, 0.9, 0.95]])
    bar = torch.tensor([0.8])
    prices = torch.tensor([1.0, 2.0, 4.0, 8.0])
    total, parts = router_loss(logits, torch.tensor([2]), prices, quality, bar, cost_weight=2.0, quality_weight=3.0)
    assert parts["route"].item() == pytest.approx(-math.log(0.25), abs=1e-6)
    # (1/8 * 1 + 1/8 * 2 + 2/8 * 4 + 4/8 * 8) / 8 = 5.375 / 8
    assert parts["cost"].item() == pytest.approx(0.671875, abs=1e-6)
    # 1/8 * 0.6 + 1/8 * 0.3 (tiers 3 and 4 meet the bar: no penalty)
    assert parts["quality"].item() == pytest.approx(0.1125, abs=1e-6)
    assert total.item() == pytest.approx(-math.log(0.25) + 2.0 * 0.671875 + 3.0 * 0.1125, abs=1e-5)


def test_per_example_costs_are_normalised_per_example():
    logits = torch.log(torch.tensor([[1.0, 1.0, 2.0, 4.0], [1.0, 1.0, 1.0, 1.0]]))
    costs = torch.tensor([[1.0, 2.0, 4.0, 8.0], [10.0, 10.0, 10.0, 20.0]])
    _, parts = router_loss(logits, torch.tensor([0, 0]), costs, torch.ones(2, 4), torch.zeros(2))
    # Row 1: 0.671875 (as above); row 2: (0.5 + 0.5 + 0.5 + 1) / 4 = 0.625.
    assert parts["cost"].item() == pytest.approx((0.671875 + 0.625) / 2, abs=1e-6)
    assert parts["quality"].item() == 0.0  # every tier meets a zero bar


def test_zero_weights_leave_only_the_route_term():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    quality = torch.rand(5, 4, generator=torch.Generator().manual_seed(1))
    total, parts = router_loss(logits, torch.tensor([0, 1, 2, 3, 0]), PRICES, quality, torch.full((5,), 0.7), 0.0, 0.0)
    assert total.item() == pytest.approx(parts["route"].item())
    assert parts["cost"].item() > 0 and parts["quality"].item() > 0


def test_quality_gradient_pushes_mass_away_from_failing_tiers():
    logits = torch.zeros(1, 4, requires_grad=True)
    quality = torch.tensor([[0.3, 0.6, 0.95, 0.99]])  # T1, T2 fail a 0.9 bar
    _, parts = router_loss(logits, torch.tensor([2]), PRICES, quality, torch.tensor([0.9]))
    parts["quality"].backward()
    grad = logits.grad[0]
    # Gradient descent lowers the logits of failing tiers (positive gradient), raises passing ones;
    # the worse tier is pushed harder.
    assert grad[0] > grad[1] > 0
    assert grad[2] < 0 and grad[3] < 0


def test_cost_gradient_prefers_cheap_tiers():
    logits = torch.zeros(1, 4, requires_grad=True)
    _, parts = router_loss(logits, torch.tensor([0]), PRICES, torch.ones(1, 4), torch.zeros(1))
    parts["cost"].backward()
    grad = logits.grad[0]
    assert grad[3] > 0 and grad[0] < 0
    assert torch.all(grad[1:] > grad[:-1])  # more expensive tier, larger push down


def test_descent_on_the_total_loss_moves_mass_off_failing_tiers():
    logits = torch.zeros(4, 4, requires_grad=True)
    quality = torch.tensor([[0.1, 0.2, 0.95, 0.99]]).repeat(4, 1)
    bar = torch.full((4,), 0.9)
    oracle = oracle_labels(quality, bar)
    optimizer = torch.optim.SGD([logits], lr=1.0)
    failing_mass = []
    for _ in range(60):
        total, _ = router_loss(logits, oracle, PRICES, quality, bar)
        failing_mass.append(logits.softmax(-1)[:, :2].sum(-1).mean().item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert all(later < earlier for earlier, later in zip(failing_mass, failing_mass[1:]))
    assert failing_mass[-1] < 0.1 * failing_mass[0]
    assert logits.softmax(-1).argmax(-1).tolist() == [2, 2, 2, 2]


def test_shape_errors_are_loud():
    with pytest.raises(ValueError, match="tier_cost"):
        router_loss(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), torch.ones(3), torch.ones(2, 4), torch.ones(2))
    with pytest.raises(ValueError, match="tier_quality"):
        router_loss(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), PRICES, torch.ones(2, 3), torch.ones(2))
