"""Token-pyramid math as pure functions.

Shape legend: B = batch, C = latent channels (Cvae), H×W = the full latent grid (16×16 for the
256 px model), pn = side of one scale's token map, L = sum of pn² over the scales, V = vocab.

A *token pyramid* is a list over scales of int64 tensors (B, pn²), row-major within a scale.
``f_hat`` is the (B, C, H, W) latent accumulated over scales. Functions never modify their
inputs; ``phis`` is the sequence of phi modules (one per scale, already resolved through the
phi table) and ``codebook`` the (V, C) embedding matrix. Everything follows §1 of the spec:
area downsampling = adaptive average pooling, upsampling = bicubic (align_corners=False).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "MatrixBicubicUp",
    "Upsample",
    "accumulate",
    "area_down",
    "bicubic_matrix",
    "bicubic_up",
    "embed_tokens",
    "fhat_from_tokens",
    "mask_step_input",
    "masked_teacher_input",
    "nearest_code",
    "next_scale_input",
    "quantize_residual",
    "scale_ids",
    "scale_slices",
    "split_scales",
    "teacher_forcing_input",
]

Phi = Callable[[torch.Tensor], torch.Tensor]


def scale_slices(patch_nums: Sequence[int]) -> list[slice]:
    """The slice of each scale in the flattened sequence of L tokens."""
    out, start = [], 0
    for pn in patch_nums:
        out.append(slice(start, start + pn * pn))
        start += pn * pn
    return out


def scale_ids(patch_nums: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Scale index of every position, int64 (L,)."""
    sizes = torch.tensor([pn * pn for pn in patch_nums], device=device)
    return torch.repeat_interleave(torch.arange(len(patch_nums), device=device), sizes)


def split_scales(x_BL: torch.Tensor, patch_nums: Sequence[int]) -> list[torch.Tensor]:
    """Split a (B, L, ...) tensor into per-scale (B, pn², ...) tensors."""
    if x_BL.shape[1] != sum(pn * pn for pn in patch_nums):
        raise ValueError(f"length {x_BL.shape[1]} does not match pyramid {tuple(patch_nums)}")
    return [x_BL[:, s] for s in scale_slices(patch_nums)]


def area_down(f_BCHW: torch.Tensor, pn: int) -> torch.Tensor:
    """Area (adaptive average) downsampling to pn×pn; identity at full size."""
    if f_BCHW.shape[-1] == pn and f_BCHW.shape[-2] == pn:
        return f_BCHW
    return F.interpolate(f_BCHW, size=(pn, pn), mode="area")


def bicubic_up(h_BChw: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic upsampling (align_corners=False) of a scale's map to the size×size grid."""
    return F.interpolate(h_BChw, size=(size, size), mode="bicubic")


Upsample = Callable[[torch.Tensor, int], torch.Tensor]


def bicubic_matrix(pn: int, size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(size, pn) matrix M with ``bicubic_up(h, size) = M · h · Mᵀ`` per channel.

    The weights of ``F.interpolate(mode="bicubic", align_corners=False)``: source coordinate
    ``(i + 0.5)·pn/size - 0.5``, Keys' cubic with a = -0.75 on the 4 neighbouring taps, taps
    beyond the border clamped to it (their weights add up on the edge pixel). Built in float64.
    """
    a = -0.75
    src = (torch.arange(size, dtype=torch.float64) + 0.5) * (pn / size) - 0.5
    left = torch.floor(src)
    t = src - left

    def near(x: torch.Tensor) -> torch.Tensor:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: torch.Tensor) -> torch.Tensor:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=1)  # (size, 4)
    taps = (left[:, None] + torch.arange(-1, 3, dtype=torch.float64)).long().clamp(0, pn - 1)
    matrix = torch.zeros(size, pn, dtype=torch.float64)
    matrix.scatter_add_(1, taps, weights)
    return matrix.to(device=device, dtype=dtype)


class MatrixBicubicUp:
    """:func:`bicubic_up` as two small matrix products per map (the same weights; sums in
    another order, so results agree to float rounding, not bit for bit).

    PyTorch's CUDA bicubic kernel parallelises over output pixels only and loops over batch ×
    channels: at B·C = 4096 maps of 16×16 one call takes ~1.5 ms on an H200, the products
    ~0.02 ms. Matrices are cached per (pn, size, device, dtype) in the instance.
    """

    def __init__(self) -> None:
        self._matrices: dict[tuple, torch.Tensor] = {}

    def __call__(self, h_BChw: torch.Tensor, size: int) -> torch.Tensor:
        pn = h_BChw.shape[-1]
        if h_BChw.shape[-2] != pn:
            raise ValueError(f"expected square maps, got {tuple(h_BChw.shape)}")
        key = (pn, size, h_BChw.device, h_BChw.dtype)
        matrix = self._matrices.get(key)
        if matrix is None:
            matrix = self._matrices[key] = bicubic_matrix(pn, size, h_BChw.device, h_BChw.dtype)
        return torch.matmul(torch.matmul(matrix, h_BChw), matrix.T)


def embed_tokens(tokens_Bl: torch.Tensor, codebook: torch.Tensor, pn: int) -> torch.Tensor:
    """Look up one scale's tokens (B, pn²) in the (V, C) codebook → (B, C, pn, pn)."""
    batch = tokens_Bl.shape[0]
    h_BlC = F.embedding(tokens_Bl, codebook)
    return h_BlC.transpose(1, 2).reshape(batch, codebook.shape[1], pn, pn)


def nearest_code(z_BChw: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code (Euclidean) for every position → (B, h·w) int64.

    Uses the official float32 formula ``|z|² + |e|² - 2 z·e`` as one matrix product (the
    first index wins ties), so indices match the official quantiser.
    """
    batch, channels = z_BChw.shape[:2]
    z_NC = z_BChw.permute(0, 2, 3, 1).reshape(-1, channels)
    dist_NV = z_NC.square().sum(dim=1, keepdim=True) + codebook.square().sum(dim=1)
    dist_NV = torch.addmm(dist_NV, z_NC, codebook.T, alpha=-2, beta=1)
    return dist_NV.argmin(dim=1).view(batch, -1)


def accumulate(
    f_hat: torch.Tensor, h_BChw: torch.Tensor, phi: Phi, is_last: bool,
    upsample: Upsample = bicubic_up,
) -> torch.Tensor:
    """Add one scale's contribution: ``f_hat + phi(up(h))`` (no upsampling at the last scale)."""
    size = f_hat.shape[-1]
    up = h_BChw if is_last else upsample(h_BChw, size)
    return f_hat + phi(up)


def quantize_residual(
    f_BCHW: torch.Tensor, codebook: torch.Tensor, phis: Sequence[Phi], patch_nums: Sequence[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Residual multi-scale quantisation of a latent.

    Returns:
        tokens: per-scale (B, pn²) int64 indices.
        f_hats: cumulative f_hat (B, C, H, W) after each scale.
    """
    size = f_BCHW.shape[-1]
    if f_BCHW.shape[-2] != size or patch_nums[-1] != size:
        raise ValueError(f"latent of shape {tuple(f_BCHW.shape)} does not fit pyramid "
                         f"{tuple(patch_nums)} (last scale must equal the latent side)")
    f_rest, f_hat = f_BCHW, torch.zeros_like(f_BCHW)
    tokens, f_hats = [], []
    for si, pn in enumerate(patch_nums):
        is_last = si == len(patch_nums) - 1
        idx_Bl = nearest_code(f_rest if is_last else area_down(f_rest, pn), codebook)
        h_BChw = embed_tokens(idx_Bl, codebook, pn)
        h_BCHW = phis[si](h_BChw if is_last else bicubic_up(h_BChw, size))
        f_hat = f_hat + h_BCHW
        f_rest = f_rest - h_BCHW
        tokens.append(idx_Bl)
        f_hats.append(f_hat)
    return tokens, f_hats


def fhat_from_tokens(
    tokens: Sequence[torch.Tensor],
    codebook: torch.Tensor,
    phis: Sequence[Phi],
    patch_nums: Sequence[int],
) -> list[torch.Tensor]:
    """Cumulative f_hat (B, C, H, W) after each of the given scales (a prefix is allowed)."""
    size = patch_nums[-1]
    batch = tokens[0].shape[0]
    f_hat = codebook.new_zeros(batch, codebook.shape[1], size, size)
    out = []
    for si, idx_Bl in enumerate(tokens):
        h_BChw = embed_tokens(idx_Bl, codebook, patch_nums[si])
        f_hat = accumulate(f_hat, h_BChw, phis[si], si == len(patch_nums) - 1)
        out.append(f_hat)
    return out


def next_scale_input(f_hat: torch.Tensor, next_pn: int) -> torch.Tensor:
    """Next-scale step input: f_hat area-downsampled to the next scale, (B, pn², C)."""
    return area_down(f_hat, next_pn).flatten(2).transpose(1, 2)


def mask_step_input(
    f_hat_before: torch.Tensor, h_BChw: torch.Tensor, phi: Phi, pn: int,
    upsample: Upsample = bicubic_up,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of a masked-refinement step at one scale.

    Args:
        f_hat_before: f_hat of the scales before this one, (B, C, H, W).
        h_BChw: this scale's current token embeddings (B, C, pn, pn).

    Returns:
        ``(x_ns, x_mask)``, both (B, pn², C): the area-downsampled f_hat, and this scale's own
        phi-processed contribution area-downsampled back to pn (bicubic is applied even at the
        last scale, where it is an identity).
    """
    size = f_hat_before.shape[-1]
    x_ns = area_down(f_hat_before, pn).flatten(2).transpose(1, 2)
    x_mask = area_down(phi(upsample(h_BChw, size)), pn).flatten(2).transpose(1, 2)
    return x_ns, x_mask


def teacher_forcing_input(
    tokens: Sequence[torch.Tensor],
    codebook: torch.Tensor,
    phis: Sequence[Phi],
    patch_nums: Sequence[int],
) -> torch.Tensor:
    """Next-scale teacher-forcing input of a whole pyramid, (B, L - 1, C).

    For scales 1..S-1: f_hat of the scales before, area-downsampled to that scale's side.
    """
    f_hats = fhat_from_tokens(tokens[:-1], codebook, phis, patch_nums)
    parts = [next_scale_input(f_hat, pn) for f_hat, pn in zip(f_hats, patch_nums[1:])]
    return torch.cat(parts, dim=1)


def masked_teacher_input(
    tokens: Sequence[torch.Tensor],
    codebook: torch.Tensor,
    phis: Sequence[Phi],
    patch_nums: Sequence[int],
) -> torch.Tensor:
    """Stage-2 second input, aligned with :func:`teacher_forcing_input`, (B, L - 1, C).

    For scales 1..S-1: that scale's own contribution phi(up(codebook[tokens])) area-downsampled
    to its side (not accumulated).
    """
    size = patch_nums[-1]
    parts = []
    for si in range(1, len(patch_nums)):
        pn = patch_nums[si]
        h_BChw = embed_tokens(tokens[si], codebook, pn)
        parts.append(area_down(phis[si](bicubic_up(h_BChw, size)), pn).flatten(2).transpose(1, 2))
    return torch.cat(parts, dim=1)
