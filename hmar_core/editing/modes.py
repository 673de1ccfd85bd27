"""Give edited pictures back in the input's mode: alpha re-applied, greyscale kept greyscale.

The engine works on RGB (``images.to_rgb`` flattens transparency onto white and copies a grey
plane to three channels). :func:`like_input` undoes that on the results: an input with an alpha
channel gets its alpha back (for an outpainted canvas, the new area is opaque), a greyscale
input gives a greyscale ("L") result, anything else stays RGB.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .. import images as im

__all__ = ["like_input"]

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_GREY_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "F")


def _alpha_and_grey(source: im.ImageLike) -> tuple[np.ndarray | None, bool]:
    """The input's alpha plane (uint8, or ``None``) and whether it is greyscale."""
    if isinstance(source, Image.Image):
        alpha = None
        if source.mode in _ALPHA_MODES or (source.mode == "P"
                                           and "transparency" in source.info):
            alpha = np.asarray(source.convert("RGBA"))[..., 3]
        grey = source.mode in _GREY_MODES or source.mode in ("LA", "La")
        return alpha, grey
    array = np.asarray(source)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 1):
        return None, True
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        plane = array[..., -1]
        if plane.dtype != np.uint8:  # floats in [0, 1] or wider integers
            top = 1.0 if plane.dtype.kind == "f" else float(np.iinfo(plane.dtype).max)
            plane = np.clip(plane.astype(np.float64) / top * 255, 0, 255).round()
        return plane.astype(np.uint8), array.shape[-1] == 2
    return None, False


def like_input(results: list[Image.Image], source: im.ImageLike,
               offset: tuple[int, int] = (0, 0)) -> list[Image.Image]:
    """The RGB ``results`` in the mode of ``source``.

    Args:
        results: RGB images, the source's size or larger (an outpainted canvas).
        source: the picture the user gave (PIL image or numpy array).
        offset: ``(left, top)`` of the source inside a larger result (outpainting).

    Returns:
        RGBA (or LA for grey + alpha) with the source's alpha where the source was (opaque
        elsewhere), "L" for a greyscale source, else the results unchanged.
    """
    alpha, grey = _alpha_and_grey(source)
    out = []
    for result in results:
        image = result.convert("L") if grey else result
        if alpha is not None:
            plane = np.full((result.height, result.width), 255, np.uint8)
            left, top = offset
            plane[top:top + alpha.shape[0], left:left + alpha.shape[1]] = alpha
            image = image.convert("LA" if grey else "RGBA")
            image.putalpha(Image.fromarray(plane))
        out.append(image)
    return out
