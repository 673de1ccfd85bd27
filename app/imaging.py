"""Pure image helpers of the app: tensors to PIL, preview strips, confidence heatmaps.

Every image derived here for display is bounded by its total pixels, whatever the shape of the
picture it comes from: a preview strip by :data:`PREVIEW_MAX_PIXELS`, a confidence overlay by
:data:`HEATMAP_MAX_PIXELS` (docs/RELIABILITY.md). A 10000×1 picture once made a 2.56 M × 256 px
strip at every scale (+7.5 GB).

Shape legend: B = batch, H×W = image size, p = side of the last token grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

__all__ = [
    "ConfidenceTile",
    "confidence_map",
    "confidence_overlay",
    "heatmap_colors",
    "preview_strip",
    "to_pil_images",
]

#: Previews are scaled up (nearest) to at least this height so coarse scales stay visible,
PREVIEW_HEIGHT = 256
#: and big pictures are scaled down to at most this height (previews stay cheap to send).
PREVIEW_MAX_HEIGHT = 384
#: A preview strip never has more pixels than this (all variants and gaps together).
PREVIEW_MAX_PIXELS = 2_000_000
#: A confidence overlay is drawn on a copy scaled down to at most this many pixels (1024²).
HEATMAP_MAX_PIXELS = 1_048_576

# A perceptual dark-blue → teal → yellow ramp (viridis-like anchors), low → high confidence.
_RAMP = np.array([
    [68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37],
], dtype=np.float64)


def to_pil_images(images_B3HW: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)
                  ) -> list[Image.Image]:
    """(B, 3, H, W) float images in ``value_range`` → a list of B RGB PIL images."""
    low, high = value_range
    scaled = ((images_B3HW.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    arrays = (scaled * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    return [Image.fromarray(np.ascontiguousarray(array)) for array in arrays]


def preview_strip(images: Sequence[Image.Image], min_height: int = PREVIEW_HEIGHT,
                  gap: int = 4, max_height: int = PREVIEW_MAX_HEIGHT,
                  max_pixels: int = PREVIEW_MAX_PIXELS) -> Image.Image:
    """The variants side by side on white, at most ``max_pixels`` in all.

    Small images are scaled up by a whole factor (nearest, so tokens stay crisp) to at least
    ``min_height``; large ones are scaled down (bilinear) to ``max_height``; then everything is
    scaled down further if the strip would exceed ``max_pixels`` (very wide pictures).
    """
    if not images:
        raise ValueError("preview_strip needs at least one image")
    height = max(image.height for image in images)
    if height > max_height:
        scale, method = max_height / height, Image.Resampling.BILINEAR
    else:
        scale, method = float(max(1, -(-min_height // height))), Image.Resampling.NEAREST  # ceil
    width = sum(image.width for image in images)
    gaps = gap * (len(images) - 1)
    # strip ≈ (width·scale + gaps) × (height·scale): solve for the largest scale that fits
    while scale > 0 and (width * scale + gaps + len(images)) * (height * scale + 1) > max_pixels:
        fitted = (-gaps + math.sqrt(gaps**2 + 4 * width * max_pixels / height)) / (2 * width)
        scale = min(scale * 0.9, fitted)
        method = Image.Resampling.BILINEAR
    sizes = [(max(1, round(image.width * scale)), max(1, round(image.height * scale)))
             for image in images]
    strip_width = sum(w for w, _ in sizes) + gaps
    strip_height = max(h for _, h in sizes)
    if strip_width * strip_height > max_pixels:  # many 1-px tiles: nothing sensible to show
        raise ValueError(f"a preview of {len(images)} images this shape exceeds "
                         f"{max_pixels} pixels")
    strip = Image.new("RGB", (strip_width, strip_height), "white")
    x = 0
    for image, size in zip(images, sizes):
        strip.paste(image.convert("RGB").resize(size, method), (x, 0))
        x += size[0] + gap
    return strip


def heatmap_colors(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to RGB uint8 colours of shape (..., 3)."""
    position = np.clip(np.nan_to_num(values, nan=0.0), 0, 1) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    rgb = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    return rgb.round().astype(np.uint8)


@dataclass(frozen=True)
class ConfidenceTile:
    """A token-confidence map and the square of the image it covers.

    Attributes:
        values: (p, p) probabilities of the final-scale tokens (1.0 where a token was kept).
        left, top, side: the model window in image pixels (may reach outside the image).
    """

    values: np.ndarray
    left: int
    top: int
    side: int


def confidence_map(tiles: Sequence[ConfidenceTile], size: tuple[int, int]) -> np.ndarray:
    """Paint the tiles (nearest, so tokens stay squares) onto an image of ``size = (W, H)``.

    Returns:
        float (H, W): the confidence where a tile covers the image (later tiles win), NaN
        elsewhere.
    """
    width, height = size
    out = np.full((height, width), np.nan, dtype=np.float32)
    for tile in tiles:
        values = np.asarray(tile.values, dtype=np.float32)
        if values.ndim != 2:
            raise ValueError(f"confidence must be 2-D (p, p), got shape {values.shape}")
        stretched = np.asarray(Image.fromarray(values).resize(
            (tile.side, tile.side), Image.Resampling.NEAREST))
        y0, x0 = max(tile.top, 0), max(tile.left, 0)
        y1, x1 = min(tile.top + tile.side, height), min(tile.left + tile.side, width)
        if y1 > y0 and x1 > x0:
            rows = slice(y0 - tile.top, y1 - tile.top)
            cols = slice(x0 - tile.left, x1 - tile.left)
            out[y0:y1, x0:x1] = stretched[rows, cols]
    return out


def _scaled_down(image: Image.Image, tiles: Sequence[ConfidenceTile], max_pixels: int
                 ) -> tuple[Image.Image, list[ConfidenceTile]]:
    """The image and its tiles scaled by one factor so that the image has ≤ ``max_pixels``."""
    if image.width * image.height <= max_pixels:
        return image, list(tiles)
    factor = math.sqrt(max_pixels / (image.width * image.height))
    size = (max(1, math.floor(image.width * factor)), max(1, math.floor(image.height * factor)))
    scaled = [ConfidenceTile(tile.values, math.floor(tile.left * factor),
                             math.floor(tile.top * factor), max(1, round(tile.side * factor)))
              for tile in tiles]
    return image.resize(size, Image.Resampling.BILINEAR), scaled


def confidence_overlay(image: Image.Image, tiles: Sequence[ConfidenceTile], alpha: float = 0.55,
                       max_pixels: int = HEATMAP_MAX_PIXELS) -> Image.Image:
    """Blend token-confidence maps over an image.

    Args:
        image: the result image (any size).
        tiles: the maps and the windows they cover (see :func:`confidence_map`); pixels no
            tile covers are left as they are.
        alpha: weight of the heatmap.
        max_pixels: larger images are drawn on a scaled-down copy (the overlay costs ~60 bytes
            per pixel while it is computed).

    Returns:
        An RGB image of the same size (or scaled down to ``max_pixels``): yellow = confident,
        dark blue = unsure.
    """
    image, tiles = _scaled_down(image, tiles, max_pixels)
    values = confidence_map(tiles, image.size)
    colors = heatmap_colors(values).astype(np.float32)  # (H, W, 3)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    weight = np.where(np.isnan(values), 0.0, alpha)[..., None]
    blended = base * (1 - weight) + colors * weight
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
