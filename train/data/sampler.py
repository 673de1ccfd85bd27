"""Class-balanced sampling: every class is drawn equally often in expectation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import WeightedRandomSampler

__all__ = ["class_balanced_sampler", "class_balanced_weights"]


def class_balanced_weights(
    targets: Sequence[int] | torch.Tensor, num_classes: int | None = None
) -> torch.Tensor:
    """Per-sample weights ``1 / count(class of the sample)``.

    Every class with samples then has total weight 1; classes without samples get none.

    Args:
        targets: Class id of every sample, shape ``(N,)``.
        num_classes: Number of class ids (default: ``max(targets) + 1``).

    Returns:
        Float64 tensor of shape ``(N,)``.

    Raises:
        ValueError: No targets, or a negative or too-large class id.
    """
    labels = torch.as_tensor(targets, dtype=torch.long).reshape(-1)  # (N,)
    if labels.numel() == 0:
        raise ValueError("cannot balance an empty dataset")
    if int(labels.min()) < 0:
        raise ValueError("class ids must be non-negative")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    elif int(labels.max()) >= num_classes:
        raise ValueError(f"class id {int(labels.max())} >= num_classes {num_classes}")
    counts = torch.bincount(labels, minlength=num_classes).double()  # (num_classes,)
    return 1.0 / counts[labels]


def class_balanced_sampler(
    targets: Sequence[int] | torch.Tensor,
    *,
    generator: torch.Generator,
    num_samples: int | None = None,
    replacement: bool = True,
) -> WeightedRandomSampler:
    """A :class:`~torch.utils.data.WeightedRandomSampler` with class-balanced weights.

    Args:
        targets: Class id of every sample, shape ``(N,)``.
        generator: The only source of randomness (seed it; save/restore its state to resume).
        num_samples: Indices drawn per pass over the sampler (default ``N``).
        replacement: Draw with replacement (needed for real balancing of small classes).

    Returns:
        The sampler.
    """
    weights = class_balanced_weights(targets)
    return WeightedRandomSampler(
        weights,
        num_samples=len(weights) if num_samples is None else num_samples,
        replacement=replacement,
        generator=generator,
    )
