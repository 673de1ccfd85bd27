"""Class-balanced sampling: every class is drawn equally often in expectation, or, with a
``power`` below 1, a tempered balance between that and the data's own class frequencies."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import WeightedRandomSampler

__all__ = ["class_balanced_sampler", "class_balanced_weights"]


def class_balanced_weights(
    targets: Sequence[int] | torch.Tensor, num_classes: int | None = None, power: float = 1.0
) -> torch.Tensor:
    """Per-sample weights ``count(class of the sample) ** -power``.

    With ``power`` 1 every class with samples has total weight 1 (drawn equally often); with
    ``power`` p a class's share of the draws is proportional to ``count ** (1 - p)``: 0 keeps
    the data's frequencies, 0.5 draws a class in proportion to the square root of its size.
    Classes without samples get none.

    Args:
        targets: Class id of every sample, shape ``(N,)``.
        num_classes: Number of class ids (default: ``max(targets) + 1``).
        power: How far to balance, in ``[0, 1]``.

    Returns:
        Float64 tensor of shape ``(N,)``.

    Raises:
        ValueError: No targets, a negative or too-large class id, or ``power`` outside
            ``[0, 1]``.
    """
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"power must be in [0, 1], got {power}")
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
    return counts[labels] ** -power


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
