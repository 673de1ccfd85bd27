"""Pure schedule functions of the sampler: mask schedules, the "steps" knob and the CFG ramp.

A mask schedule has one entry per scale; entry ``[a0, a1, ..., am]`` means: the next-scale step
finalises ``a0`` tokens, then ``m`` masked-refinement steps finalise ``a1, ..., am`` (official
semantics, spec §3.3). Only the length and ``a1..am`` matter; entries sum to pn².
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "Schedule",
    "cfg_weight",
    "default_schedule",
    "remask_counts",
    "schedule_from_steps",
    "validate_schedule",
]

Schedule = tuple[tuple[int, ...], ...]


def default_schedule(patch_nums: Sequence[int]) -> Schedule:
    """The official default: 1 refinement step at scale 1, 3 at scale 2, none elsewhere.

    For the 256 px pyramid this is ``[[1], [1, 3], [1, 1, 2, 5], [16], [25], ...]``.
    """
    out: list[tuple[int, ...]] = []
    for si, pn in enumerate(patch_nums):
        n = pn * pn
        if si == 1 and n >= 2:
            out.append((1, n - 1))
        elif si == 2 and n >= 5:
            out.append((1, 1, 2, n - 4))
        else:
            out.append((n,))
    return tuple(out)


def schedule_from_steps(
    patch_nums: Sequence[int], steps: int, max_side: int | None = None
) -> Schedule:
    """Map the user's quality knob to a schedule.

    ``steps = 0`` is pure next-scale prediction (fastest). ``steps = s > 0`` gives every
    *coarse* scale (1 < pn ≤ ``max_side``, by default max(2, last side / 2), where layout is
    decided and passes are cheap; a model's ``SamplerConfig.refine_max_side`` narrows it to
    the scales where its measured refinement helps) ``min(s, R)`` refinement steps that
    together re-predict its ``R = n - ceil(n/4)`` least confident tokens, finalising them on
    a cosine curve (MaskGIT): few at first, most at the end. Cost: one extra full-depth pass
    per step at those scales.
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps}")
    if max_side is not None and (int(max_side) != max_side or max_side < 2):
        raise ValueError(f"max_side must be an int >= 2, got {max_side}")
    limit = max(2, patch_nums[-1] // 2) if max_side is None else int(max_side)
    out: list[tuple[int, ...]] = []
    for pn in patch_nums:
        n = pn * pn
        if steps == 0 or n == 1 or pn > limit:
            out.append((n,))
            continue
        remask = n - math.ceil(n / 4)
        m = min(steps, remask)
        # tokens still masked after step j: remask * cos(pi/2 * j/m), strictly decreasing
        left = [math.floor(remask * math.cos(math.pi / 2 * j / m)) for j in range(m + 1)]
        for j in range(1, m + 1):
            left[j] = min(left[j], left[j - 1] - 1, remask - j)
        left[m] = 0
        commits = [left[j - 1] - left[j] for j in range(1, m + 1)]
        out.append((n - remask, *commits))
    return tuple(out)


def validate_schedule(schedule: Sequence[Sequence[int]], patch_nums: Sequence[int]) -> Schedule:
    """Check a schedule against the pyramid and return it as a tuple of tuples.

    Raises:
        ValueError: wrong number of scales, empty entries, counts < 1, or an entry whose counts
            do not sum to that scale's pn².
    """
    if len(schedule) != len(patch_nums):
        raise ValueError(f"mask schedule has {len(schedule)} entries but the pyramid "
                         f"{tuple(patch_nums)} has {len(patch_nums)} scales")
    out = []
    for si, (entry, pn) in enumerate(zip(schedule, patch_nums)):
        entry = tuple(int(a) for a in entry)
        if not entry or min(entry) < 1:
            raise ValueError(f"mask schedule entry {si} must hold positive counts, got {entry}")
        if sum(entry) != pn * pn:
            raise ValueError(f"mask schedule entry {si} sums to {sum(entry)}, but scale {si} has "
                             f"{pn * pn} tokens ({pn}x{pn})")
        out.append(entry)
    return tuple(out)


def remask_counts(entry: Sequence[int]) -> list[int]:
    """Tokens that stay masked before each refinement step: ``[a1+..+am, a2+..+am, ..., am]``."""
    tail = list(entry[1:])
    return [sum(tail[j:]) for j in range(len(tail))]


def cfg_weight(cfg: float, scale: int, num_scales: int) -> float:
    """Guidance weight t of the next-scale step: ``cfg · si / (S - 1)`` (0 at scale 0)."""
    return cfg * scale / max(num_scales - 1, 1)
