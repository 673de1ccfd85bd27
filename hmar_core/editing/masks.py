"""Edit masks: pixel mask → per-scale token masks, and feathered pixel compositing.

Shape legend: B = batch, S = the model's image side, P = side of the final token grid
(``patch_nums[-1]``), pn = side of one scale, H×W = an image in pixels.

**Pixel → token rule** (:func:`token_masks`), True = regenerate:

1. Final grid (P×P): a token is regenerated when *any* pixel of its ``S/P``-pixel cell is in
   the mask (max-pool), so every masked pixel is produced by the model.
2. Grow: the final-grid mask is dilated by ``grow`` tokens (a square (2·grow+1) kernel).
   Border tokens mix in their neighbours through the decoder's receptive field, the bicubic
   upsampling and the 3×3 phi conv, so one extra ring (MaskGIT/MAGE use one) stops kept
   tokens next to the hole from "recording" what was there.
3. Coarser scales: the fraction of each pn×pn cell covered by the grown final-grid mask, by
   the pyramid's own area downsampling (adaptive average pooling), regenerates the cell when
   it is ``> coarse_threshold``. The default 0.5 is VAR's rule (bilinear > 0.5): a coarse
   token mostly describing kept content stays from the source, so a small hole does not
   re-draw the global colour (scale 0) and shift everything around it, which shows as a seam.
   ``coarse_threshold = 0`` regenerates every coarse cell that overlaps the hole at all
   (stronger semantic change, more risk of colour seams).

**Composite** (:func:`feather_weights`, :func:`composite`): the generated pixels are blended
in with a weight that is exactly 1 on the mask, falls off smoothly over ``feather`` pixels
(OpenCV dilation by ``feather/2`` with a square kernel, then a Gaussian blur of the same
square support), and is exactly 0 farther than ``feather`` pixels (Chebyshev distance) from
the mask, so those pixels are bit-identical to the original.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["composite", "feather_weights", "token_masks"]


def token_masks(
    pixel_mask_BSS: torch.Tensor,
    patch_nums: Sequence[int],
    *,
    grow: int = 1,
    coarse_threshold: float = 0.5,
) -> list[torch.Tensor]:
    """Per-scale regenerate masks from one pixel mask at model resolution.

    Args:
        pixel_mask_BSS: (B, S, S) bool, True = regenerate; S must be a multiple of P.
        patch_nums: the pyramid.
        grow: dilation of the final-grid mask, in tokens (≥ 0).
        coarse_threshold: a coarser cell regenerates when its covered fraction exceeds this
            (in [0, 1); 0 = any overlap).

    Returns:
        Per scale, (B, pn²) bool (True = regenerate), row-major like the token pyramid.
    """
    if pixel_mask_BSS.dim() != 3 or pixel_mask_BSS.dtype != torch.bool:
        raise ValueError(f"pixel mask must be bool (B, S, S), got {pixel_mask_BSS.dtype} "
                         f"{tuple(pixel_mask_BSS.shape)}")
    side, last = pixel_mask_BSS.shape[-1], patch_nums[-1]
    if pixel_mask_BSS.shape[-2] != side or side % last:
        raise ValueError(f"pixel mask side {tuple(pixel_mask_BSS.shape[-2:])} is not a square "
                         f"multiple of the final token grid {last}")
    if int(grow) != grow or grow < 0:
        raise ValueError(f"grow must be an int >= 0, got {grow}")
    if not 0.0 <= coarse_threshold < 1.0:
        raise ValueError(f"coarse_threshold must be in [0, 1), got {coarse_threshold}")
    cell = side // last
    mask_B1SS = pixel_mask_BSS[:, None].float()
    final_B1PP = F.max_pool2d(mask_B1SS, kernel_size=cell, stride=cell)  # any overlap
    if grow:
        final_B1PP = F.max_pool2d(final_B1PP, kernel_size=2 * grow + 1, stride=1, padding=grow)
    out = []
    for pn in patch_nums:
        if pn == last:
            regen = final_B1PP > 0.5
        else:
            covered = F.interpolate(final_B1PP, size=(pn, pn), mode="area")  # (B, 1, pn, pn)
            regen = covered > coarse_threshold
        out.append(regen.flatten(1))  # (B, pn²)
    return out


def feather_weights(mask: np.ndarray, feather: int) -> np.ndarray:
    """Blend weight of the generated pixels, float32 (H, W) in [0, 1].

    Exactly 1 on ``mask``, exactly 0 beyond ``feather`` pixels (Chebyshev) from it, smooth in
    between. ``feather = 0`` gives the hard mask.
    """
    if int(feather) != feather or feather < 0:
        raise ValueError(f"feather must be an int >= 0, got {feather}")
    hard = mask.astype(np.float32)
    if feather == 0 or not mask.any():
        return hard
    half = feather // 2
    kernel = 2 * half + 1
    grown = cv2.dilate(hard, np.ones((kernel, kernel), np.uint8)) if half else hard
    sigma = max(feather / 4.0, 0.5)
    soft = cv2.GaussianBlur(grown, (kernel, kernel), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REPLICATE) if half else grown
    support = cv2.dilate(hard, np.ones((2 * feather + 1, 2 * feather + 1), np.uint8))
    soft = np.where(support > 0, soft, 0.0)
    return np.where(mask, 1.0, np.clip(soft, 0.0, 1.0)).astype(np.float32)


def composite(original: np.ndarray, generated: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``w·generated + (1 - w)·original`` as uint8 (H, W, 3); where w = 0 the original bytes.

    Only the bounding box of ``w > 0`` is blended (an edit's feathered mask is usually a small
    part of the picture); the rest is a copy of ``original``.
    """
    out = original.copy()
    rows = np.flatnonzero(weights.any(axis=1))
    if rows.size == 0:
        return out
    cols = np.flatnonzero(weights.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    w, kept = weights[box][..., None], original[box]
    blended = np.rint(w * generated[box].astype(np.float32) + (1 - w) * kept.astype(np.float32))
    out[box] = np.where(w > 0, np.clip(blended, 0, 255).astype(np.uint8), kept)
    return out
