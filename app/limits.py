"""What the app accepts as a picture: formats, total pixels and shape, checked from the header.

Every check here reads at most a file's header (``Image.open`` is lazy), so a few hundred bytes
that declare a huge or absurdly thin picture are refused before anything is decoded. The
limits are documented in docs/RELIABILITY.md.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from hmar_core.images import READ_FORMATS

from .errors import InputError

__all__ = ["MAX_ASPECT_RATIO", "MAX_PIXELS", "MAX_UPLOAD_BYTES", "MAX_UPLOAD_FILES",
           "check_picture_size", "header_size", "open_image"]

logger = logging.getLogger(__name__)

#: Pictures above this many pixels are refused (the browser canvas struggles long before).
MAX_PIXELS = 40_000_000
#: The longer side may be at most this many times the shorter one. The engine fits a picture
#: into square model windows, so a 10000×1 strip would vanish into one row of one token while
#: its previews and masks still cost the full width; 16:1 leaves room for outpainted panoramas.
MAX_ASPECT_RATIO = 16
#: One request (an upload, an editor snapshot, an API call) carries at most this many bytes in
#: all (20 MiB, Gradio's "20mb"), ...
MAX_UPLOAD_BYTES = 20 * 2**20
#: ... and at most this many files (an editor value: background, composite, one layer).
MAX_UPLOAD_FILES = 3


def check_picture_size(width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a picture whose size the app cannot use.

    Args:
        width, height: the picture's size in pixels (from its header or its array).
        max_pixels: the largest accepted ``width * height``.

    Raises:
        InputError: empty, above ``max_pixels``, or more elongated than
            :data:`MAX_ASPECT_RATIO`; the message says what to upload instead.
    """
    if width < 1 or height < 1:
        raise InputError(f"The picture is empty ({width}×{height}).")
    if width * height > max_pixels:
        raise InputError(f"The picture is too large ({width}×{height}); "
                         f"use one under {max_pixels // 1_000_000} megapixels.")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InputError(f"The picture is too elongated ({width}×{height}); use one at most "
                         f"{MAX_ASPECT_RATIO} times wider than tall (or taller than wide).")


def open_image(source: str | Path | bytes) -> Image.Image:
    """Open an uploaded picture lazily (header only), in one of ``READ_FORMATS``.

    Args:
        source: a file path or the file's bytes.

    Raises:
        InputError: not a PNG, JPEG, WebP, GIF, BMP or TIFF file, or unreadable.
    """
    stream: Any = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        return Image.open(stream, formats=READ_FORMATS)
    except Image.DecompressionBombError:
        raise InputError("The picture is too large; use one under "
                         f"{MAX_PIXELS // 1_000_000} megapixels.") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        logger.info("refused an upload: %s: %s", type(err).__name__, str(err)[:200])
        raise InputError("Could not read the image: upload a PNG, JPEG or WebP picture "
                         f"(read: {', '.join(READ_FORMATS)}).") from None


def header_size(source: str | Path | bytes) -> tuple[int, int]:
    """``(width, height)`` of an uploaded picture from its header, in a format we read."""
    with open_image(source) as image:
        return image.size
