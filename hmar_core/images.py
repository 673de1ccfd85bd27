"""Image and mask conversion for editing: any PIL/numpy input → uint8 RGB or bool masks.

Shape legend: H×W = an image in pixels, S = the model's image side, B = batch. Arrays are
numpy, row-major ``(H, W)`` / ``(H, W, 3)``; model tensors are ``(B, 3, S, S)`` in [-1, 1].

Conversion rules (documented once here, used by every editing entry point):

* **Images** become uint8 RGB. Transparency (RGBA, LA, PA, P with a transparent index) is
  composited on white. 16-bit data (PIL ``I;16*``/``I`` with values above 255, numpy uint16)
  is scaled by 255/65535 with rounding. Floats are taken as [0, 1] when their maximum is ≤ 1,
  else as [0, 255]; both are clipped. CMYK, YCbCr, 1-bit, L and P go through PIL's own
  ``convert("RGB")``. An empty image (a side of 0) is a ``ValueError``.
* **Masks** (True = edit here) are read as one float plane in [0, 1] and thresholded at 50 %:
  ``value >= 0.5``. RGBA/LA masks use their alpha when any pixel is transparent (a brush
  layer), otherwise their luminance; numpy masks scale like images (bool, uint8 /255,
  uint16 /65535, floats as above). A mask of another size than its image is resized (bilinear
  on the float plane, then the same threshold) with a logged warning, because editors often
  send a canvas-sized layer; refusing would only move the resize into every caller.
* **Size limit**: images and masks above :data:`MAX_INPUT_PIXELS` (8192 × 8192 = 64 MP) are
  refused with a ``ValueError`` before any pixel is decoded or converted (a PIL image opened
  from a file is checked from its header), so a huge or decompression-bomb input cannot
  exhaust memory. Downscale such pictures first. A file that cannot be decoded (truncated,
  corrupt) is a ``ValueError`` too, and so is a model window wider than
  :data:`MAX_WINDOW_SIDE` (16384 px; see :func:`crop_window`).
* **Files** are read by :func:`open_image`: only :data:`READ_FORMATS`, regular files only (a
  folder or FIFO is refused before any ``open``), the size checked from the header first.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "MAX_INPUT_PIXELS",
    "MAX_WINDOW_SIDE",
    "READ_FORMATS",
    "ImageLike",
    "Window",
    "crop_window",
    "from_model_images",
    "mask_coverage",
    "open_image",
    "paste_window",
    "resize_image",
    "to_mask",
    "to_model_images",
    "to_pil",
    "to_rgb",
]

logger = logging.getLogger(__name__)

ImageLike = Image.Image | np.ndarray
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: The only file formats read anywhere (app, CLI, datasets):
#: ``Image.open(f, formats=READ_FORMATS)`` (see :func:`open_image`). Anything else PIL could
#: open (EPS would run Ghostscript, PSD, ICO, ...) is refused.
READ_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: Largest image or mask accepted, in pixels (8192 × 8192 = 64 MP; see the module docstring).
MAX_INPUT_PIXELS = 8192 * 8192
#: Largest window :func:`crop_window` cuts (side, px): a "masked" fit with a huge padding or
#: the "whole" square of a very elongated picture would otherwise allocate side² pixels.
MAX_WINDOW_SIDE = 16384
# What PIL raises while decoding a damaged file (SyntaxError: broken PNG chunks;
# DecompressionBombError: a later GIF frame or TIFF page declaring a huge size).
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, IndexError,
                  Image.DecompressionBombError)


def _check_size(width: int, height: int, what: str) -> None:
    """Refuse inputs above :data:`MAX_INPUT_PIXELS` (before anything is decoded)."""
    if width * height > MAX_INPUT_PIXELS:
        raise ValueError(f"{what} is {width}x{height} = {width * height / 2**20:.1f} MP, above "
                         f"the {MAX_INPUT_PIXELS // 2**20} MP limit (MAX_INPUT_PIXELS): "
                         "downscale it first")


def _decoded(image: Image.Image, what: str) -> Image.Image:
    """The image with its pixels loaded; a damaged file is a ``ValueError``."""
    try:
        image.load()
    except _DECODE_ERRORS as err:
        raise ValueError(f"cannot decode the {what} ({image.format or image.mode} data): "
                         f"{err}") from err
    return image


def _bomb_message(err: Image.DecompressionBombError, what: str) -> str:
    """PIL's own refusal (above ~179 MP, raised by ``Image.open``) in this module's words."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    size = f"{int(found.group(1)) / 2**20:.1f} MP" if found else "larger than PIL's bomb limit"
    return (f"{what} is {size}, above the {MAX_INPUT_PIXELS // 2**20} MP limit "
            "(MAX_INPUT_PIXELS): downscale it first")


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """Read an image file of one of :data:`READ_FORMATS`, fully decoded.

    The size is checked from the header before any pixel is decoded (the
    :data:`MAX_INPUT_PIXELS` rule of :func:`to_rgb`), and the path must be a regular file:
    a folder is refused and a FIFO would block the reader forever.

    Args:
        path: the file.
        what: how messages name the file ("image", "mask").

    Raises:
        ValueError: a one-line reason: missing, not a regular file, not one of
            :data:`READ_FORMATS` (EPS, PSD, ... are never opened), too large, or undecodable
            (truncated, corrupt).
    """
    path = Path(path)
    label = f"the {what} {path}"
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ValueError(f"cannot read {label}: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise ValueError(f"{label} is {kind}, not an image file")
    try:
        file = path.open("rb")
    except OSError as err:
        raise ValueError(f"cannot read {label}: {err.strerror or err}") from None
    with file:
        try:
            image = Image.open(file, formats=READ_FORMATS)
        except Image.DecompressionBombError as err:
            raise ValueError(_bomb_message(err, label)) from None
        except UnidentifiedImageError:
            raise ValueError(f"{label} is not a supported image file (readable formats: "
                             f"{', '.join(READ_FORMATS)})") from None
        except _DECODE_ERRORS as err:
            raise ValueError(f"cannot read {label}: {err}") from None
        _check_size(image.width, image.height, label)
        return _decoded(image, f"{what} {path}")


# ------------------------------------------------------------------------------- to arrays
def _plane_to_unit(values: np.ndarray) -> np.ndarray:
    """Any numeric array → float32 in [0, 1] by the module's dtype rules."""
    if values.dtype == np.bool_:
        return values.astype(np.float32)
    if values.dtype == np.uint8:
        return values.astype(np.float32) / 255.0
    if np.issubdtype(values.dtype, np.floating):
        values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        scale = 1.0 if values.size == 0 or float(values.max()) <= 1.0 else 255.0
        return np.clip(values / scale, 0.0, 1.0)
    if np.issubdtype(values.dtype, np.integer):
        wide = values.dtype == np.uint16 or (values.size and values.max() > 255)
        top = 65535.0 if wide else 255.0
        return np.clip(values.astype(np.float32) / top, 0.0, 1.0)
    raise ValueError(f"unsupported array dtype {values.dtype}")


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite float RGB (H, W, 3) in [0, 1] with alpha (H, W) on white → uint8."""
    return _to_uint8(rgb * alpha[..., None] + (1.0 - alpha[..., None]))


def _on_white_uint8(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """:func:`_on_white` for uint8 colour (H, W, 3) and alpha (H, W), in integers.

    ``round(c·a/255 + 255 - a)`` never ties (255 is odd), so this equals the float path
    bit for bit; ``c·a + 255·(255 - a) + 127 <= 65152`` fits uint16, so it needs ~6 bytes per
    pixel and channel instead of ~16.
    """
    weight = alpha.astype(np.uint16)[..., None]  # (H, W, 1)
    blended = color.astype(np.uint16)  # (H, W, 3)
    blended *= weight
    np.subtract(255, weight, out=weight)
    weight *= 255
    weight += 127
    blended += weight
    del weight
    blended //= 255
    return blended.astype(np.uint8)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode == "F":
        plane = _plane_to_unit(np.asarray(image))
        return np.repeat(_to_uint8(plane)[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in image.info
    ):
        rgba = np.asarray(image.convert("RGBA"))
        return _on_white_uint8(rgba[..., :3], rgba[..., 3])
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot convert a PIL image of mode {mode!r} to RGB: {err}") from err


def _numpy_to_array(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return np.repeat(_to_uint8(_plane_to_unit(array))[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (2, 3, 4):
        raise ValueError(f"image array must be (H, W), (H, W, 1|2|3|4), got {array.shape}")
    if array.dtype == np.uint8:  # the common case, without a float copy
        if array.shape[2] == 3:
            return array.copy()
        color = array[..., :3] if array.shape[2] == 4 else np.repeat(array[..., :1], 3, axis=2)
        return _on_white_uint8(color, array[..., -1])
    unit = _plane_to_unit(array)
    if array.shape[2] == 3:
        return _to_uint8(unit)
    color = unit[..., :3] if array.shape[2] == 4 else np.repeat(unit[..., :1], 3, axis=2)
    return _on_white(color, unit[..., -1])


def to_rgb(image: ImageLike) -> np.ndarray:
    """Any PIL image or numpy array → uint8 RGB (H, W, 3) (rules in the module docstring).

    Raises:
        ValueError: not a PIL image / numpy array, an empty, too large (above
            :data:`MAX_INPUT_PIXELS`) or undecodable image, or an unsupported layout.
    """
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"empty image ({image.width}x{image.height})")
        _check_size(image.width, image.height, "the image")
        rgb = _pil_to_array(_decoded(image, "image"))
    elif isinstance(image, np.ndarray):
        if image.ndim < 2 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"empty image array of shape {image.shape}")
        _check_size(image.shape[1], image.shape[0], "the image")
        rgb = _numpy_to_array(image)
    else:
        raise ValueError(f"image must be a PIL.Image or a numpy array, got {type(image).__name__}")
    return np.ascontiguousarray(rgb)


def _mask_plane(mask: ImageLike) -> np.ndarray:
    """A mask as a float32 (h, w) plane in [0, 1]."""
    if isinstance(mask, Image.Image):
        if mask.width == 0 or mask.height == 0:
            raise ValueError(f"empty mask ({mask.width}x{mask.height})")
        _check_size(mask.width, mask.height, "the mask")
        mask = _decoded(mask, "mask")
        if mask.mode in _SIXTEEN_BIT or mask.mode == "F":
            return _plane_to_unit(np.asarray(mask))
        if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
            rgba = np.asarray(mask.convert("RGBA"))
            if (rgba[..., 3] < 255).any():
                return rgba[..., 3].astype(np.float32) / 255.0
        return np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"mask must be a PIL.Image or a numpy array, got {type(mask).__name__}")
    if mask.ndim < 2 or mask.shape[0] == 0 or mask.shape[1] == 0:
        raise ValueError(f"empty mask array of shape {mask.shape}")
    _check_size(mask.shape[1], mask.shape[0], "the mask")
    if mask.ndim == 3 and mask.shape[2] in (2, 4):
        alpha = _plane_to_unit(mask[..., -1])
        if (alpha < 1.0).any():
            return alpha
        mask = mask[..., :-1]
    if mask.ndim == 3 and mask.shape[2] in (1, 3):
        return _plane_to_unit(mask).mean(axis=2)
    if mask.ndim != 2:
        raise ValueError(f"mask array must be (H, W) or (H, W, 1|2|3|4), got {mask.shape}")
    return _plane_to_unit(mask)


def to_mask(mask: ImageLike, size: tuple[int, int]) -> np.ndarray:
    """A mask (True = edit) as bool (H, W) for an image of ``size = (H, W)``.

    Non-binary masks are thresholded at 50 %; a mask of another size is resized to ``size``
    with a warning (see the module docstring).
    """
    plane = _mask_plane(mask)
    if plane.shape != tuple(size):
        logger.warning("mask is %dx%d but the image is %dx%d: resizing the mask (bilinear, "
                       "50%% threshold)", plane.shape[1], plane.shape[0], size[1], size[0])
        plane = cv2.resize(plane, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return plane >= 0.5


def to_pil(rgb: np.ndarray) -> Image.Image:
    """uint8 (H, W, 3) → PIL RGB image (a copy)."""
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")


# -------------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class Window:
    """A square region ``[top, top + side) × [left, left + side)`` of an image.

    It may reach outside the image; :func:`crop_window` fills that part by edge replication
    (images) or zeros (masks), and :func:`paste_window` writes back only the inside part.
    """

    left: int
    top: int
    side: int

    @classmethod
    def whole(cls, height: int, width: int) -> Window:
        """The centred square of side ``max(H, W)`` holding the whole image ("whole" fit)."""
        side = max(height, width)
        return cls((width - side) // 2, (height - side) // 2, side)

    @classmethod
    def around(cls, mask: np.ndarray, padding: int) -> Window:
        """The square around the mask's bounding box grown by ``padding`` px ("masked" fit).

        The square is centred on the box and shifted to stay inside the image when it fits.
        """
        rows, cols = np.nonzero(mask)
        height, width = mask.shape
        top, bottom = int(rows.min()) - padding, int(rows.max()) + 1 + padding
        left, right = int(cols.min()) - padding, int(cols.max()) + 1 + padding
        side = max(bottom - top, right - left)
        top -= (side - (bottom - top)) // 2
        left -= (side - (right - left)) // 2
        return cls(_shift_inside(left, side, width), _shift_inside(top, side, height), side)

    def inside(self, height: int, width: int) -> np.ndarray:
        """bool (H, W): the pixels of an H×W image covered by the window."""
        out = np.zeros((height, width), dtype=bool)
        out[max(self.top, 0):self.top + self.side, max(self.left, 0):self.left + self.side] = True
        return out


def _shift_inside(start: int, side: int, limit: int) -> int:
    if side >= limit:
        return start if start <= 0 and start + side >= limit else (limit - side) // 2
    return min(max(start, 0), limit - side)


def crop_window(array: np.ndarray, window: Window) -> np.ndarray:
    """Crop a window; outside the image: edge replication for (H, W, 3), zeros for (H, W).

    Raises:
        ValueError: the window is wider than :data:`MAX_WINDOW_SIDE`.
    """
    if window.side > MAX_WINDOW_SIDE:
        raise ValueError(f"the model window would be {window.side} px wide, above the "
                         f"{MAX_WINDOW_SIDE} px limit (MAX_WINDOW_SIDE): use less padding or a "
                         "less elongated picture")
    height, width = array.shape[:2]
    pad_top, pad_left = max(-window.top, 0), max(-window.left, 0)
    pad_bottom = max(window.top + window.side - height, 0)
    pad_right = max(window.left + window.side - width, 0)
    top, left = max(window.top, 0), max(window.left, 0)
    inner = array[top:window.top + window.side, left:window.left + window.side]
    if not (pad_top or pad_left or pad_bottom or pad_right):
        return inner.copy()
    if array.ndim == 3:
        source = np.ascontiguousarray(inner)
        return cv2.copyMakeBorder(source, pad_top, pad_bottom, pad_left, pad_right,
                                  cv2.BORDER_REPLICATE)
    return np.pad(inner, ((pad_top, pad_bottom), (pad_left, pad_right)))


def paste_window(canvas: np.ndarray, patch: np.ndarray, window: Window) -> np.ndarray:
    """A copy of ``canvas`` with the in-image part of a (side, side, ...) patch written in."""
    height, width = canvas.shape[:2]
    out = canvas.copy()
    top, left = max(window.top, 0), max(window.left, 0)
    bottom = min(window.top + window.side, height)
    right = min(window.left + window.side, width)
    out[top:bottom, left:right] = patch[top - window.top:bottom - window.top,
                                        left - window.left:right - window.left]
    return out


# ------------------------------------------------------------------------------- resizing
def resize_image(rgb: np.ndarray, side: int) -> np.ndarray:
    """Resize a square uint8 image to side×side (area when shrinking, bicubic when growing).

    Same size returns an unchanged copy, so model-resolution inputs pass through exactly.
    """
    if rgb.shape[0] == side and rgb.shape[1] == side:
        return rgb.copy()
    shrink = rgb.shape[0] > side
    return cv2.resize(rgb, (side, side),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def mask_coverage(mask: np.ndarray, side: int) -> np.ndarray:
    """Resize a square bool mask to side×side with *any overlap* semantics.

    A target pixel is True when any part of it covers a True source pixel (area average > 0),
    so an edit region never shrinks away when the image is downscaled.
    """
    if mask.shape == (side, side):
        return mask.copy()
    if mask.shape[0] > side:
        return cv2.resize(mask.astype(np.float32), (side, side),
                          interpolation=cv2.INTER_AREA) > 0
    # Growing: pixel j of the target covers source rows [j·h/side, (j+1)·h/side).
    index = (np.arange(side) * mask.shape[0]) // side
    return mask[index][:, index]


def to_model_images(
    rgbs: list[np.ndarray], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """uint8 (S, S, 3) images → (B, 3, S, S) in [-1, 1] on ``device``/``dtype``."""
    # the bytes travel as they are (a quarter of float32's) and are converted on the device
    stacked = torch.from_numpy(np.stack(rgbs)).to(device)  # (B, S, S, 3) uint8
    return (stacked.permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0).contiguous()


def from_model_images(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) in [-1, 1] → uint8 (B, S, S, 3) (same rounding as ``images01 * 255``)."""
    unit = ((images.detach().float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    return (unit * 255).round().to(torch.uint8).cpu().numpy()
