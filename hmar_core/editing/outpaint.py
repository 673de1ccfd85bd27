"""Outpainting: extend the canvas and generate the new area, window by window.

The canvas is the input plus ``left/right/top/bottom`` pixels. The new area is pre-filled
(``"replicate"``: edge replication then a Gaussian blur of the new part, a colour prior that
the kept coarse tokens carry into the generated area; ``"mean"``: the input's mean colour)
and marked unknown. Then:

* if the whole canvas, as one padded square window, is at least half known → one edit;
* otherwise windows of the *original's* scale (a square of side ``max(H, W)`` canvas pixels,
  i.e. the model window at the resolution the input itself would get) slide over the
  canvas: each step picks the window that covers the most unknown pixels while at least 50 %
  of its in-canvas pixels are known (original or already generated), ties going to the window
  nearest the original. Where no window can be half known (a 1-pixel-thin original) the most
  known one is used, with a logged warning. Each window is an edit whose mask is its unknown
  part plus an overlap band: the pixels that earlier windows generated within ``overlap``
  pixels of that unknown part (default: an eighth of the window). So a later window sees what
  earlier ones made, regenerates their junction with context on both sides (a window's own
  edge was generated blind) and is composited with the feather over it: windows overlap and
  blend instead of meeting at a hard seam. The original pixels are never in a mask. After a
  window its pixels count as known. At most ``max_windows`` windows (:func:`window_masks`).

Zero total extent returns the input unchanged (no model call); negative extents raise.
Window ``i`` uses seed ``seed`` for i = 0 and a fixed derivation of ``(seed, i)`` after that,
so windows do not replay the same random draws. With an edit session, windows reuse its
encodings and scale cache.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .. import images as im
from .modes import like_input
from .ops import EditResult, PreviewCallback, edit_window, make_job, result_of, unchanged
from .session import EditSession
from .spec import EditOptions

if TYPE_CHECKING:
    from ..engine import EditModel

__all__ = ["FILL_MODES", "outpaint", "plan_outpaint_windows", "prefill_canvas", "window_masks"]

logger = logging.getLogger(__name__)

FILL_MODES = ("replicate", "mean")
MAX_CANVAS_SIDE = 16384
_GOLDEN = 0x9E3779B97F4A7C15


def _check_extents(left: int, right: int, top: int, bottom: int) -> None:
    for name, value in (("left", left), ("right", right), ("top", top), ("bottom", bottom)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int number of pixels, got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0 (outpainting only extends), got {value}")


def prefill_canvas(
    rgb: np.ndarray, left: int, right: int, top: int, bottom: int, fill: str = "replicate"
) -> tuple[np.ndarray, np.ndarray]:
    """The extended canvas, uint8 (Hc, Wc, 3), and its known mask, bool (Hc, Wc)."""
    if fill not in FILL_MODES:
        raise ValueError(f"fill must be one of {FILL_MODES}, got {fill!r}")
    height, width = rgb.shape[:2]
    known = np.zeros((height + top + bottom, width + left + right), dtype=bool)
    known[top:top + height, left:left + width] = True
    if fill == "replicate":
        canvas = cv2.copyMakeBorder(rgb, top, bottom, left, right, cv2.BORDER_REPLICATE)
        sigma = max(2.0, max(height, width) / 8)
        blurred = cv2.GaussianBlur(canvas, (0, 0), sigmaX=sigma, sigmaY=sigma)
        canvas = np.where(known[..., None], canvas, blurred)
    else:
        mean = np.rint(rgb.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
        canvas = np.empty((*known.shape, 3), dtype=np.uint8)
        canvas[:] = mean
        canvas[known] = rgb.reshape(-1, 3)
    return np.ascontiguousarray(canvas), known


def _positions(length: int, side: int) -> list[int]:
    """Window starts along one axis: a stride of side/8, always including the far end."""
    if length <= side:
        return [(length - side) // 2]
    starts = list(range(0, length - side + 1, max(1, side // 8)))
    if starts[-1] != length - side:
        starts.append(length - side)
    return starts


def plan_outpaint_windows(
    height: int,
    width: int,
    *,
    left: int = 0,
    right: int = 0,
    top: int = 0,
    bottom: int = 0,
    max_windows: int = 64,
) -> list[im.Window]:
    """The model windows (canvas coordinates) that outpaint an H×W image (module docstring).

    Raises:
        ValueError: more than ``max_windows`` windows would be needed.
    """
    _check_extents(left, right, top, bottom)
    canvas_h, canvas_w = height + top + bottom, width + left + right
    known = np.zeros((canvas_h, canvas_w), dtype=np.int32)
    known[top:top + height, left:left + width] = 1
    if known.all():
        return []
    if known.mean() >= 0.5:
        return [im.Window.whole(canvas_h, canvas_w)]
    side = max(height, width, 2)
    centre_y, centre_x = top + height / 2, left + width / 2
    ys, xs = _positions(canvas_h, side), _positions(canvas_w, side)
    windows: list[im.Window] = []
    while not known.all():
        if len(windows) == max_windows:
            raise ValueError(f"outpainting a {width}x{height} image by {left}/{right}/{top}/"
                             f"{bottom} px needs more than {max_windows} windows; extend in "
                             "several smaller calls")
        integral = np.pad(known.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # (Hc + 1, Wc + 1)
        best, best_score = None, None
        for y in ys:
            y0, y1 = max(y, 0), min(y + side, canvas_h)
            for x in xs:
                x0, x1 = max(x, 0), min(x + side, canvas_w)
                area = (y1 - y0) * (x1 - x0)
                seen = int(integral[y1, x1] - integral[y0, x1] - integral[y1, x0]
                           + integral[y0, x0])
                if seen == area:
                    continue
                fraction = seen / area
                distance = abs(y + side / 2 - centre_y) + abs(x + side / 2 - centre_x)
                score = ((1, area - seen, -distance) if fraction >= 0.5
                         else (0, fraction, -distance))
                if best_score is None or score > best_score:
                    best, best_score = (x, y), score
        assert best is not None and best_score is not None
        if best_score[0] == 0:
            logger.warning("outpaint: no window keeps half known content; using %.0f%%",
                           100 * best_score[1])
        x, y = best
        windows.append(im.Window(x, y, side))
        known[max(y, 0):y + side, max(x, 0):x + side] = 1
    return windows


def window_masks(
    known: np.ndarray, windows: list[im.Window], overlap: int | None = None
) -> list[np.ndarray]:
    """The mask each outpaint window regenerates (module docstring), bool (Hc, Wc) each.

    Args:
        known: bool (Hc, Wc), True on the original pixels.
        windows: :func:`plan_outpaint_windows`.
        overlap: the band of earlier windows' pixels regenerated by a later window, in pixels
            (``None``: an eighth of the window side; 0: no overlap, abutting windows).
    """
    if overlap is not None and (int(overlap) != overlap or overlap < 0):
        raise ValueError(f"overlap must be an int >= 0, got {overlap!r}")
    original, done = known.copy(), known.copy()
    masks = []
    for window in windows:
        inside = window.inside(*known.shape)
        unknown = ~done & inside
        band = window.side // 8 if overlap is None else int(overlap)
        mask = unknown
        if band > 0 and unknown.any():
            size = 2 * band + 1
            near = cv2.dilate(unknown.astype(np.uint8), np.ones((size, size), np.uint8)) > 0
            mask = unknown | (near & done & ~original & inside)
        masks.append(mask)
        done = done | inside
    return masks


def outpaint(
    pipe: EditModel,
    image: im.ImageLike,
    *,
    left: int = 0,
    right: int = 0,
    top: int = 0,
    bottom: int = 0,
    options: EditOptions | None = None,
    fill: str = "replicate",
    max_windows: int = 64,
    overlap: int | None = None,
    session: EditSession | None = None,
    on_preview: PreviewCallback | None = None,
) -> EditResult:
    """Extend ``image`` by the given pixels on each side and generate the new area.

    Args:
        pipe: the pipeline.
        image: PIL image or numpy array, any size and mode.
        left, right, top, bottom: extents in pixels (≥ 0).
        options: sampler/blend options (``fit`` and ``padding`` do not apply: outpainting
            picks its own windows).
        fill: pre-fill of the new area, ``"replicate"`` or ``"mean"``.
        max_windows: refuse extents needing more model windows than this.
        overlap: pixels of earlier windows that a later window regenerates and blends over
            (``None``: an eighth of the window side; 0: windows only abut).
        session: an :class:`EditSession`; its encodings cache serves repeated windows.
        on_preview: called after every scale of every window.

    Returns:
        An :class:`EditResult` whose images have the canvas size.
    """
    options = options or EditOptions()
    _check_extents(left, right, top, bottom)
    if fill not in FILL_MODES:
        raise ValueError(f"fill must be one of {FILL_MODES}, got {fill!r}")
    rgb = im.to_rgb(image)
    height, width = rgb.shape[:2]
    if max(height + top + bottom, width + left + right) > MAX_CANVAS_SIDE:
        raise ValueError(f"the outpainted canvas would exceed {MAX_CANVAS_SIDE} px")
    job = make_job(pipe, options, session, on_preview)
    if left + right + top + bottom == 0:
        return unchanged(rgb, options)
    canvas, known = prefill_canvas(rgb, left, right, top, bottom, fill)
    windows = plan_outpaint_windows(height, width, left=left, right=right, top=top,
                                    bottom=bottom, max_windows=max_windows)
    canvases = [canvas] * options.num_variants
    seconds = [0.0] * len(pipe.patch_nums)
    for index, (window, mask) in enumerate(zip(windows, window_masks(known, windows, overlap))):
        seed = job.seed if index == 0 else (job.seed + index * _GOLDEN) % 2**63
        canvases, run, spec, decoded = edit_window(job, canvases, mask, window,
                                                   seed=seed, index=index, count=len(windows))
        seconds = [a + b for a, b in zip(seconds, run.seconds)]
    return result_of(job, like_input([im.to_pil(c) for c in canvases], image, (left, top)),
                     run, spec, decoded, windows, seconds)
