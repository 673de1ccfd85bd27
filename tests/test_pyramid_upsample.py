"""The fast path's bicubic upsampling as matrix products against ``F.interpolate``."""

from __future__ import annotations

import pytest
import torch

from hmar_core.config import PATCH_NUMS
from hmar_core.pyramid import MatrixBicubicUp, bicubic_matrix, bicubic_up


@pytest.mark.parametrize("pyramid", sorted(PATCH_NUMS))
def test_matrix_bicubic_equals_interpolate_in_float64(pyramid):
    """Same weights as PyTorch's bicubic (a = -0.75, align_corners=False, clamped border) for
    every scale of the official pyramids, to float64 rounding."""
    patch_nums = PATCH_NUMS[pyramid]
    size = patch_nums[-1]
    up = MatrixBicubicUp()
    gen = torch.Generator().manual_seed(0)
    for pn in patch_nums[:-1]:
        h = torch.randn(2, 3, pn, pn, generator=gen, dtype=torch.float64)
        assert (up(h, size) - bicubic_up(h, size)).abs().max() < 1e-12, (pyramid, pn)


def test_matrix_bicubic_odd_sizes_float32_and_cache():
    up = MatrixBicubicUp()
    gen = torch.Generator().manual_seed(1)
    for pn, size in ((1, 7), (2, 9), (5, 11), (7, 7), (3, 40)):
        h = torch.randn(4, 2, pn, pn, generator=gen)
        ref = bicubic_up(h, size)
        assert (up(h, size) - ref).abs().max() <= 1e-5 * ref.abs().max().clamp_min(1)
    assert len(up._matrices) == 5
    rows = bicubic_matrix(5, 16)
    assert torch.allclose(rows.sum(1), torch.ones(16, dtype=torch.float32))  # partition of 1
    with pytest.raises(ValueError, match="square"):
        up(torch.zeros(1, 1, 2, 3), 8)
