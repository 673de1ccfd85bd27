"""Scale masks: which query may attend to which key in a token pyramid.

Shape legend: L = total tokens of the pyramid (sum of pn²), S = number of scales.

A :class:`ScaleMask` is built once per ``patch_nums`` and pattern and then passed to every
:func:`kernels.attention` call, like FlexAttention's ``create_block_mask``. Two patterns exist:

* ``"block_diagonal"`` (HMAR): a token sees only the tokens of its own scale.
* ``"block_causal"`` (VAR): a token sees its own scale and every coarser scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

__all__ = ["Pattern", "ScaleMask"]

Pattern = Literal["block_diagonal", "block_causal"]
_PATTERNS = ("block_diagonal", "block_causal")


@dataclass(frozen=True)
class ScaleMask:
    """Attention pattern over a token pyramid.

    Args:
        patch_nums: side of each scale's token map, coarse to fine, e.g. ``(1, 2, 3, 4)``.
        pattern: ``"block_diagonal"`` or ``"block_causal"``.
    """

    patch_nums: tuple[int, ...]
    pattern: Pattern = "block_diagonal"
    scale_sizes: tuple[int, ...] = field(init=False)
    scale_starts: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        patch_nums = tuple(int(p) for p in self.patch_nums)
        if not patch_nums or any(p <= 0 for p in patch_nums):
            raise ValueError(f"patch_nums must be non-empty positive ints, got {self.patch_nums}")
        if self.pattern not in _PATTERNS:
            raise ValueError(f"pattern must be one of {_PATTERNS}, got {self.pattern!r}")
        sizes = tuple(p * p for p in patch_nums)
        starts = tuple(sum(sizes[:i]) for i in range(len(sizes)))
        object.__setattr__(self, "patch_nums", patch_nums)
        object.__setattr__(self, "scale_sizes", sizes)
        object.__setattr__(self, "scale_starts", starts)

    @property
    def length(self) -> int:
        """Total number of tokens L."""
        return sum(self.scale_sizes)

    def scale_ids(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Scale index of every position, int64 (L,)."""
        sizes = torch.tensor(self.scale_sizes, device=device)
        return torch.repeat_interleave(torch.arange(len(self.scale_sizes), device=device), sizes)

    def row_bounds(
        self, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query row, the allowed key range ``[start, end)``, both int32 (L,).

        The allowed keys of every row form one contiguous range for both patterns.
        """
        ids = self.scale_ids(device)
        starts = torch.tensor(self.scale_starts, device=device, dtype=torch.int32)
        ends = starts + torch.tensor(self.scale_sizes, device=device, dtype=torch.int32)
        row_end = ends[ids]
        row_start = starts[ids] if self.pattern == "block_diagonal" else torch.zeros_like(row_end)
        return row_start.contiguous(), row_end.contiguous()

    def dense(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean (L, L) matrix, True where query row i may attend to key column j."""
        ids = self.scale_ids(device)
        if self.pattern == "block_diagonal":
            return ids[:, None] == ids[None, :]
        return ids[:, None] >= ids[None, :]

    def allowed_pairs(self) -> int:
        """Number of allowed (query, key) pairs, for FLOP counts."""
        if self.pattern == "block_diagonal":
            return sum(s * s for s in self.scale_sizes)
        pairs = zip(self.scale_sizes, self.scale_starts, strict=True)
        return sum(size * (start + size) for size, start in pairs)
