"""The batching and schedule pieces every training loop shares."""

import pytest
import torch

from export.training import bucketed_batch_count, length_bucketed_batches, warmup_linear


@pytest.mark.parametrize("n, batch", [(4800, 16), (1000, 16), (17, 4), (1, 8), (801, 16)])
def test_bucketed_batches_cover_every_example_once_and_count_matches(n, batch):
    lengths = [(i * 37) % 211 for i in range(n)]
    batches = length_bucketed_batches(lengths, batch, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(1 <= len(b) <= batch for b in batches)
    assert len(batches) == bucketed_batch_count(n, batch)


def test_bucketed_batches_pad_far_less_than_shuffled_batches():
    generator = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(10, 224, (3200,), generator=generator)]

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    shuffled = torch.randperm(len(lengths), generator=generator).tolist()
    plain = [shuffled[i : i + 16] for i in range(0, len(shuffled), 16)]
    bucketed = length_bucketed_batches(lengths, 16, torch.Generator().manual_seed(0))
    assert padded(bucketed) < 0.7 * padded(plain)


def test_bucketed_batches_are_deterministic_per_seed():
    lengths = list(range(100))
    first = length_bucketed_batches(lengths, 8, torch.Generator().manual_seed(3))
    assert first == length_bucketed_batches(lengths, 8, torch.Generator().manual_seed(3))
    assert first != length_bucketed_batches(lengths, 8, torch.Generator().manual_seed(4))


def test_warmup_then_linear_decay_to_zero():
    factor = warmup_linear(100, 0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(100) == 0.0
    assert factor(55) == pytest.approx(0.5)
