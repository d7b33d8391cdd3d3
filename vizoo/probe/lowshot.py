"""Low-shot sampling: k training images per class, drawn with a seed.

The EP paper reports low-shot probing (arXiv 2506.10178; its public code has no sampler, so this one is vizoo's own).
vizoo's protocol: for each seed, draw exactly k images of every class from the training split without
replacement (seeded ``torch.randperm`` per class), train on those only, select on the full validation split
and report test accuracy; results are given per seed and as mean/std over seeds.
"""

from __future__ import annotations

import torch


def sample_k_shot(labels: torch.Tensor, k: int, seed: int, num_classes: int | None = None) -> torch.Tensor:
    """Sorted indices of exactly ``k`` samples per class.

    Args:
        labels: int labels ``[n]`` of the training split.
        k: samples per class (>= 1).
        seed: random seed (different seeds give different samples).
        num_classes: the number of classes; every class in ``range(num_classes)`` must have >= k samples
            (default: the classes present in ``labels``).

    Raises:
        ValueError: k < 1, or k larger than the smallest class.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (images per class) must be an int >= 1, got {k!r}")
    labels = torch.as_tensor(labels, dtype=torch.int64)
    classes = list(range(num_classes)) if num_classes is not None else torch.unique(labels).tolist()
    counts = {c: int((labels == c).sum()) for c in classes}
    smallest = min(counts, key=counts.get)
    if counts[smallest] < k:
        raise ValueError(
            f"k={k} images per class is larger than the smallest class: class {smallest} has "
            f"{counts[smallest]} training images. Use k <= {counts[smallest]}."
        )
    generator = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in classes:
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.sort(torch.cat(chosen)).values
