"""Two Gradio components adjusted so that user slips reach the handlers as data, not as errors.

* :class:`RangeSlider` is ``gr.Slider`` without the server-side bounds check: Gradio's own check
  raises for a value typed past the end (an error badge, while the browser then clamps the box
  anyway), so the app's one rule for out-of-range values (:func:`app.params.clamp`: clamp and
  say so in the status line) could not apply.
* :class:`PictureEditor` is ``gr.ImageEditor`` whose pre-processing turns a picture that PIL
  refuses to decode (a decompression bomb: more pixels than ``Image.MAX_IMAGE_PIXELS`` allows)
  into :class:`RefusedPicture` instead of Gradio's raw "Could not preprocess input component"
  error with a server path; the handlers show the app's message for it.

Both reuse the built-in frontend (``is_template``), so the browser sees the usual components.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

__all__ = ["PictureEditor", "RangeSlider", "RefusedPicture"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefusedPicture:
    """An upload that could not be decoded; ``reason`` is the user-facing message."""

    reason: str

from gradio.events import Dependency

class RangeSlider(gr.Slider):
    """``gr.Slider`` that passes out-of-range numbers to the handler (which clamps them)."""

    is_template = True

    def preprocess(self, payload: float) -> float:  # type: ignore[override]
        """The value as typed (rounded to the slider's precision), even outside its range."""
        return gr.Number.round_to_precision(payload, self.precision)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class PictureEditor(gr.ImageEditor):
    """``gr.ImageEditor`` that hands an undecodable picture to the handler as a message."""

    is_template = True

    def __init__(self, *args: Any, max_pixels: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_pixels = max_pixels

    def preprocess(self, payload: Any) -> Any:  # type: ignore[override]
        """The usual editor value, or a :class:`RefusedPicture` for a too-large picture."""
        try:
            return super().preprocess(payload)
        except Image.DecompressionBombError:
            logger.info("upload refused: over the decoding limit of %d pixels",
                        Image.MAX_IMAGE_PIXELS or 0)
            return RefusedPicture(too_large_message(None, self.max_pixels))
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


def too_large_message(size: tuple[int, int] | None, max_pixels: int) -> str:
    """The app's one message for a picture with too many pixels."""
    shown = f" ({size[0]}×{size[1]})" if size else ""
    return (f"The picture is too large{shown}: use one under "
            f"{max_pixels // 1_000_000} megapixels.")