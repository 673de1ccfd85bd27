"""Pure image helpers of the app: tensors to PIL, preview strips, confidence heatmaps.

Shape legend: B = batch, H×W = image size, p = side of the last token grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = [
    "confidence_overlay",
    "heatmap_colors",
    "preview_strip",
    "to_pil_images",
]

#: Previews are scaled up (nearest) to at least this height so coarse scales stay visible.
PREVIEW_HEIGHT = 256

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
                  gap: int = 4) -> Image.Image:
    """The variants side by side on white, scaled up (nearest) to at least ``min_height``."""
    if not images:
        raise ValueError("preview_strip needs at least one image")
    height = max(image.height for image in images)
    factor = max(1, -(-min_height // height))  # ceil
    tiles = [image.convert("RGB").resize((image.width * factor, image.height * factor),
                                         Image.Resampling.NEAREST) for image in images]
    width = sum(tile.width for tile in tiles) + gap * (len(tiles) - 1)
    strip = Image.new("RGB", (width, height * factor), "white")
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + gap
    return strip


def heatmap_colors(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to RGB uint8 colours of shape (..., 3)."""
    position = np.clip(np.nan_to_num(values, nan=0.0), 0, 1) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    rgb = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    return rgb.round().astype(np.uint8)


def confidence_overlay(image: Image.Image, confidence_pp: np.ndarray, alpha: float = 0.55
                       ) -> Image.Image:
    """Blend a token-confidence map over an image.

    Args:
        image: the result image (any size).
        confidence_pp: (p, p) probabilities of the final-scale tokens (or any 2-D map in
            [0, 1]); it is stretched (nearest, so each token stays a visible square) over the
            image.
        alpha: weight of the heatmap.

    Returns:
        An RGB image of the same size: yellow = confident, dark blue = unsure.
    """
    confidence = np.asarray(confidence_pp, dtype=np.float64)
    if confidence.ndim != 2:
        raise ValueError(f"confidence must be 2-D (p, p), got shape {confidence.shape}")
    colors = Image.fromarray(heatmap_colors(confidence)).resize(image.size,
                                                                Image.Resampling.NEAREST)
    return Image.blend(image.convert("RGB"), colors, alpha)
