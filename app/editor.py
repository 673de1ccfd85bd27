"""Pure helpers that read the value of ``gr.ImageEditor`` (Gradio 6).

The editor's value is ``{"background": img | None, "layers": [img, ...], "composite": img | None}``
with every image an (H, W, 3|4) uint8 array (``type="numpy"``, ``image_mode="RGBA"``), all at the
canvas size. The brush paints into the layers, so the edit mask is the union of the layers'
alpha > 0 (spec §1.2; gradio ``demo/image_editor_inpainting``). Nothing here imports Gradio.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from .errors import InputError
from .limits import open_image

__all__ = ["background_image", "editor_value", "mask_from_layers", "mask_image"]

logger = logging.getLogger(__name__)


def _as_array(image: Any) -> np.ndarray | None:
    """An editor image (numpy, PIL, or a file path) as an (H, W, C) uint8 array, or ``None``."""
    if image is None:
        return None
    if isinstance(image, np.ndarray):
        array = image
    elif isinstance(image, Image.Image):
        array = np.asarray(image)
    else:  # a file path (type="filepath")
        with open_image(image) as opened:  # READ_FORMATS only (app/limits.py)
            array = np.asarray(opened.convert("RGBA"))
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise InputError(f"expected an image array of shape (H, W, C), got {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array


def mask_from_layers(
    layers: Sequence[Any] | None, size: tuple[int, int] | None = None
) -> np.ndarray | None:
    """Union of the layers' painted pixels (alpha > 0) as an (H, W) bool mask.

    Args:
        layers: the editor's ``layers`` (RGBA arrays; an RGB layer counts as fully painted
            only where it is not black, which is what Gradio gives with ``image_mode="RGB"``).
        size: ``(width, height)`` of the background; layers of another size are resized to it
            (nearest) so the mask always matches the image.

    Returns:
        The (H, W) bool mask, or ``None`` when there are no layers at all.
    """
    if not layers:
        return None
    mask: np.ndarray | None = None
    for layer in layers:
        array = _as_array(layer)
        if array is None:
            continue
        if array.shape[-1] == 4:
            painted = array[..., 3] > 0
        else:
            painted = array.max(axis=-1) > 0
        if size is not None and painted.shape[::-1] != tuple(size):
            resized = Image.fromarray(painted).resize(size, Image.Resampling.NEAREST)
            painted = np.asarray(resized, dtype=bool)
        mask = painted if mask is None else mask | painted
    return mask


def background_image(value: Mapping[str, Any] | None) -> Image.Image | None:
    """The uploaded picture (the editor's background) as a PIL image, or ``None`` if empty.

    Falls back to the composite when the user drew on an empty canvas without a background.
    A background that is fully transparent counts as empty. The editor always sends RGBA: an
    opaque picture becomes RGB, one whose three channels are equal becomes greyscale ("L", or
    "LA" with transparency), so that results come back in the mode of the upload.
    """
    if not value:
        return None
    array = _as_array(value.get("background"))
    if array is None or (array.shape[-1] == 4 and not array[..., 3].any()):
        array = _as_array(value.get("composite"))
    if array is None or (array.shape[-1] == 4 and not array[..., 3].any()):
        return None
    if array.shape[-1] not in (1, 3, 4):
        raise InputError(f"unsupported image with {array.shape[-1]} channels")
    if array.shape[-1] == 4 and array[..., 3].min() == 255:
        array = array[..., :3]  # the editor sends RGBA; an opaque picture is RGB
    if array.shape[-1] >= 3 and (array[..., 0] == array[..., 1]).all() and (
            array[..., 1] == array[..., 2]).all():
        array = array[..., [0, 3]] if array.shape[-1] == 4 else array[..., :1]  # greyscale
    if array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array))


def editor_value(value: Mapping[str, Any] | None) -> tuple[Image.Image | None, np.ndarray | None]:
    """``(background, mask)`` from the editor value; the mask is ``None`` if nothing is painted."""
    background = background_image(value)
    if background is None or value is None:
        return background, None
    mask = mask_from_layers(value.get("layers"), size=background.size)
    if mask is not None and not mask.any():
        mask = None
    return background, mask


def mask_image(mask: np.ndarray) -> Image.Image:
    """An (H, W) bool mask as a mode-"L" image (255 = change, 0 = keep)."""
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))
