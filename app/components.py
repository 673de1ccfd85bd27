"""Two Gradio components adjusted so that user slips reach the handlers as data, not as errors.

* :func:`RangeSlider` is ``gr.Slider`` without the server-side bounds check: Gradio's own check
  raises for a value typed past the end (an error badge, while the browser then clamps the box
  anyway), so the app's one rule for out-of-range values (:func:`app.params.clamp`: clamp and
  say so in the status line) could not apply.
* :class:`PictureEditor` is the bounded ``gr.ImageEditor`` whose pre-processing turns a picture
  refused from its header (too large, too elongated, an unsupported format) or that PIL
  refuses to decode (a decompression bomb) into :class:`RefusedPicture` instead of an error
  over the outputs (or Gradio's raw "Could not preprocess input component" with a server
  path); the handlers show the app's message for it.

Both override only ``preprocess`` (the slider on the instance, the editor in a subclass), so the
browser sees the usual components.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from .editor_component import BoundedImageEditor
from .limits import MAX_PIXELS

__all__ = ["MAX_PIXELS", "PictureEditor", "RangeSlider", "RefusedPicture", "too_large_message"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefusedPicture:
    """An upload that could not be decoded; ``reason`` is the user-facing message."""

    reason: str


def RangeSlider(*args: Any, **kwargs: Any) -> gr.Slider:  # noqa: N802 (a component)
    """``gr.Slider`` that passes out-of-range numbers to the handler (which clamps them)."""
    slider = gr.Slider(*args, **kwargs)

    def preprocess(payload: float) -> float:
        return gr.Number.round_to_precision(payload, slider.precision)

    slider.preprocess = preprocess  # type: ignore[method-assign]
    return slider


class PictureEditor(BoundedImageEditor):
    """The bounded editor (:class:`~app.editor_component.BoundedImageEditor`: layers, formats
    and sizes checked from the headers before decoding) that hands a refused or undecodable
    picture to the handler as a message.

    A class, not a wrapper of one instance: Gradio rebuilds the component from its
    constructor's arguments for a session whose editor got a property update (the brush size),
    and that copy must refuse pictures the same way.
    """

    def preprocess(self, payload: Any) -> Any:
        """As the bounded editor; a refused picture becomes a :class:`RefusedPicture`."""
        try:
            return super().preprocess(payload)
        except gr.Error as err:  # refused from its header: the app's own message
            logger.info("upload refused: %s", err.message)
            return RefusedPicture(str(err.message))
        except Image.DecompressionBombError:
            logger.info("upload refused: over the decoding limit of %s pixels",
                        Image.MAX_IMAGE_PIXELS)
            return RefusedPicture(too_large_message(None, MAX_PIXELS))


def too_large_message(size: tuple[int, int] | None, max_pixels: int) -> str:
    """The app's one message for a picture with too many pixels."""
    shown = f" ({size[0]}×{size[1]})" if size else ""
    return (f"The picture is too large{shown}: use one under "
            f"{max_pixels // 1_000_000} megapixels.")
