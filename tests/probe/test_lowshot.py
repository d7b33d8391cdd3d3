"""Low-shot sampler: exact counts per class, seeded, clear error for k larger than a class."""

import pytest
import torch

from vizoo.probe.lowshot import sample_k_shot


def test_exact_counts_and_seeds():
    labels = torch.tensor([0] * 7 + [1] * 5 + [2] * 9)
    a = sample_k_shot(labels, 3, seed=0)
    assert torch.bincount(labels[a]).tolist() == [3, 3, 3]
    assert len(set(a.tolist())) == 9
    assert torch.equal(a, sample_k_shot(labels, 3, seed=0))
    assert not torch.equal(a, sample_k_shot(labels, 3, seed=1))
    every = sample_k_shot(labels, 5, seed=4)
    assert set(every[labels[every] == 1].tolist()) == set(range(7, 12))  # the whole smallest class


def test_k_too_large_or_invalid():
    labels = torch.tensor([0] * 7 + [1] * 5 + [2] * 9)
    with pytest.raises(ValueError, match="k=6 .*class 1 has 5 .*k <= 5"):
        sample_k_shot(labels, 6, seed=0)
    with pytest.raises(ValueError, match="class 3 has 0"):
        sample_k_shot(labels, 1, seed=0, num_classes=4)
    with pytest.raises(ValueError, match=">= 1"):
        sample_k_shot(labels, 0, seed=0)
