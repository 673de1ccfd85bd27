"""Explicit, step-keyed randomness.

Every random decision of a trainer (data order, label dropout, mask ratios and positions,
dead-code restarts) comes from a ``torch.Generator`` seeded with a hash of
``(run seed, purpose, step, ...)``. The decision of a step therefore depends on nothing but
those numbers: a resumed run repeats it exactly, and a run on N processes makes the same global
decision as a run on one (each rank then takes its slice of the global batch).
"""

from __future__ import annotations

import enum

import numpy as np
import torch

__all__ = ["Purpose", "derived_generator", "derived_seed", "rank_seed"]


class Purpose(enum.IntEnum):
    """Independent random streams of a run."""

    DATA_ORDER = 1
    LABEL_DROP = 2
    MASK = 3
    CODE_RESTART = 4
    PREVIEW = 5
    INIT = 6
    VAL_SPLIT = 7


def derived_seed(*keys: int) -> int:
    """A 63-bit seed that is a hash of non-negative integer ``keys``."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def derived_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derived_seed` of ``keys``."""
    generator = torch.Generator()
    generator.manual_seed(derived_seed(*keys))
    return generator


def rank_seed(seed: int, rank: int) -> int:
    """Seed of the global torch RNG of ``rank`` (stochastic depth draws from it)."""
    return derived_seed(seed, 0, rank)
