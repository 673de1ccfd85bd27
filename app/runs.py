"""Model work of the app as generators of :class:`RunUpdate` (no Gradio here).

Each run yields one update per decoded scale (a preview that sharpens scale by scale), then a
final update carrying the :class:`RunResult`. The pipeline is passed in; nothing is global.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import torch
from PIL import Image

from hmar_core import GenerateOutput, Pipeline, ScaleState
from hmar_core.editing import EditOptions, EditPreview, EditResult, EditSession, outpaint
from hmar_core.editing.outpaint import plan_outpaint_windows

from .imaging import ConfidenceTile, preview_strip, to_pil_images
from .params import SamplingParams, Timing, max_quality_steps, refinement_passes, work_estimate
from .streaming import Finished, StopSignal, stream_work

__all__ = ["EDIT_MODES", "RunResult", "RunUpdate", "UserRun", "calibrate", "new_run_id",
           "run_edit", "run_generate"]

#: The editing modes of :func:`run_edit`.
EDIT_MODES = ("inpaint", "outpaint", "class edit")

logger = logging.getLogger(__name__)


class UserRun(StopSignal):
    """A user's Stop flag that also knows whether a run of this user is in progress.

    Kept in ``gr.State`` (deep-copied per user, see :class:`StopSignal`). The handlers call
    :meth:`begin` / :meth:`end` around the model work, so that Stop with nothing running is a
    no-op with a message instead of a misleading "Stopped.".
    """

    def __init__(self) -> None:
        super().__init__()
        self._running = threading.Event()

    def begin(self) -> None:
        """A run starts: forget an earlier Stop."""
        self.clear()
        self._running.set()

    def end(self) -> None:
        """The run ended (finished, failed or stopped)."""
        self._running.clear()

    @property
    def running(self) -> bool:
        """Whether a run of this user is in progress."""
        return self._running.is_set()


def new_run_id() -> str:
    """A short id that makes download names unique, e.g. ``20261207-014512-3fa2``."""
    return f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class RunResult:
    """The finished images of one run (kept per user in ``gr.State``).

    Attributes:
        mode: "generate", "inpaint", "outpaint" or "class edit".
        images: the results, full resolution.
        confidences: per image, its token-confidence tiles (one per model window).
        seed: the seed used.
        seconds: wall time of the run.
        classes: per image, the name of its class ("" when the run had none).
        run_id: unique per run (:func:`new_run_id`); part of the download names.
        size: the model's resolution in pixels (the side of one model window).
        source: edits only, the picture that was edited, placed on the result's canvas (for
            the before / after view).
    """

    mode: str
    images: tuple[Image.Image, ...]
    confidences: tuple[tuple[ConfidenceTile, ...], ...]
    seed: int
    seconds: float
    classes: tuple[str, ...] = ()
    run_id: str = field(default_factory=new_run_id)
    size: int = 0
    source: Image.Image | None = None


@dataclass(frozen=True)
class RunUpdate:
    """One step of a run for the UI.

    Attributes:
        fraction: progress in [0, 1].
        message: a short status line.
        preview: the current scale's decoded images side by side (``None`` if unchanged).
        result: set on the last update only.
    """

    fraction: float
    message: str
    preview: Image.Image | None = None
    result: RunResult | None = None


def _class_name(pipeline: Pipeline, class_id: int | None) -> str:
    """The name of a class id ("" for none or the null class)."""
    if class_id is None or not 0 <= class_id < pipeline.num_classes:
        return ""
    return str(pipeline.class_names[class_id])


@dataclass(frozen=True)
class _ScalePreview:
    scale: int
    images: list[Image.Image]


def _preview_from_state(pipeline: Pipeline, state: ScaleState) -> _ScalePreview:
    """Decode the running latent of a scale into images (runs in the worker thread)."""
    images = pipeline.decode_latent(state.f_hat)  # (B, 3, H, W) in [0, 1], on its engine
    return _ScalePreview(state.scale, to_pil_images(images, (0.0, 1.0)))


def run_generate(
    pipeline: Pipeline, class_id: int | None, params: SamplingParams,
    stop: StopSignal | None = None, timing: Timing | None = None,
) -> Iterator[RunUpdate]:
    """Generate ``params.variants`` images of one class, previewing every scale.

    Args:
        pipeline: the loaded model.
        class_id: the class, or ``None`` for a random class per image.
        params: validated sampling controls.
        stop: the user's Stop flag (the run ends at the next scale once it is set).
        timing: measured costs, for the expected time in the first status line.

    Yields:
        One :class:`RunUpdate` per scale, then one with the :class:`RunResult`.
    """
    num_scales = len(pipeline.patch_nums)
    started = time.perf_counter()

    def work(report: Callable[[_ScalePreview], None]) -> GenerateOutput:
        def on_scale(state: ScaleState) -> None:
            if state.scale < num_scales - 1:  # the last scale is the result itself
                report(_preview_from_state(pipeline, state))

        return pipeline.generate(
            class_id, seed=params.seed, cfg=params.cfg, top_k=params.top_k,
            top_p=params.top_p, steps=params.steps, batch_size=params.variants,
            on_scale=on_scale,
        )

    estimate = work_estimate(pipeline.patch_nums, params.steps, 1, params.variants, timing)
    yield RunUpdate(0.0, f"Starting: {estimate} · seed {params.seed}…")
    for event in stream_work(work, stop):
        if isinstance(event, Finished):
            output = event.value
            images = tuple(to_pil_images(output.images))
            side = pipeline.image_size
            confidences = tuple((ConfidenceTile(c.float().cpu().numpy(), 0, 0, side),)
                                for c in output.confidence)
            seconds = time.perf_counter() - started
            classes = tuple(_class_name(pipeline, int(i)) for i in output.labels)
            names = ", ".join(sorted(set(classes)))
            result = RunResult("generate", images, confidences, output.seed, seconds, classes,
                               size=side)
            yield RunUpdate(1.0, f"Done in {seconds:.1f} s · seed {output.seed} · {names}",
                            preview_strip(images), result)
        else:
            scale = event.item.scale
            yield RunUpdate((scale + 1) / num_scales,
                            f"Scale {scale + 1}/{num_scales} "
                            f"({pipeline.patch_nums[scale]}×{pipeline.patch_nums[scale]} tokens)",
                            preview_strip(event.item.images))


def _edit_tiles(result: EditResult, finals: dict[int, torch.Tensor]
                ) -> tuple[tuple[ConfidenceTile, ...], ...]:
    """Per image, the final confidence of every model window, placed in image coordinates."""
    per_window = []
    for index, window in enumerate(result.windows):
        confidence = finals.get(index)
        if confidence is None and index == len(result.windows) - 1:
            confidence = result.confidence
        if confidence is not None:
            per_window.append((confidence.float().cpu().numpy(), window))
    return tuple(
        tuple(ConfidenceTile(values[b], window.left, window.top, window.side)
              for values, window in per_window)
        for b in range(len(result.images))
    )


def run_edit(
    pipeline: Pipeline,
    mode: str,
    image: Image.Image,
    mask: np.ndarray | None,
    options: EditOptions,
    *,
    extents: dict[str, int] | None = None,
    session: EditSession | None = None,
    stop: StopSignal | None = None,
    timing: Timing | None = None,
) -> Iterator[RunUpdate]:
    """Inpaint, outpaint or class-edit one picture, previewing every scale of every window.

    Args:
        pipeline: the loaded model.
        mode: one of :data:`EDIT_MODES`.
        image: the user's picture, any size and mode (the engine fits it to the model).
        mask: bool (H, W), True = regenerate; ``None`` = the whole picture (class edit).
        options: engine options (class, seed, steps, strength, grow, feather, fit, ...).
        extents: outpaint only, pixels per side ``{"left", "right", "top", "bottom"}``.
        session: the user's :class:`EditSession` (re-edits resume unchanged coarse scales).
        stop: the user's Stop flag (the run ends at the next scale once it is set).
        timing: measured costs, for the expected time (from the number of model windows).

    Yields:
        One :class:`RunUpdate` per scale (and window), then one with the :class:`RunResult`.
    """
    if mode not in EDIT_MODES:
        raise ValueError(f"unknown edit mode {mode!r}; use one of {EDIT_MODES}")
    num_scales = len(pipeline.patch_nums)
    started = time.perf_counter()
    finals: dict[int, torch.Tensor] = {}

    def work(report: Callable[[EditPreview], None]) -> EditResult:
        def on_preview(preview: EditPreview) -> None:
            if preview.scale == preview.num_scales - 1:
                finals[preview.window] = preview.confidence
            report(preview)

        if mode == "outpaint":
            sides = extents or {}
            return outpaint(pipeline, image, left=sides.get("left", 0),
                            right=sides.get("right", 0), top=sides.get("top", 0),
                            bottom=sides.get("bottom", 0), options=options,
                            on_preview=on_preview)
        return pipeline.edit(image, mask, options, session=session, on_preview=on_preview)

    windows = 1
    if mode == "outpaint":
        sides = extents or {}
        windows = max(1, len(plan_outpaint_windows(image.height, image.width, **{
            side: int(sides.get(side, 0)) for side in ("left", "right", "top", "bottom")})))
    estimate = work_estimate(pipeline.patch_nums, options.steps or 0, windows,
                             options.num_variants, timing)
    yield RunUpdate(0.0, f"Starting {mode}: {estimate}…")
    for event in stream_work(work, stop):
        if isinstance(event, Finished):
            result = event.value
            seconds = time.perf_counter() - started
            seed = result.seed if result.seed is not None else 0
            images = tuple(result.images)  # in the upload's mode (alpha / greyscale kept)
            cached = (f" · reused {result.resumed_from + 1} cached scale(s)"
                      if result.resumed_from >= 0 else "")
            classes = (_class_name(pipeline, options.class_id),) * len(images)
            run = RunResult(mode, images, _edit_tiles(result, finals), seed, seconds, classes,
                            size=pipeline.image_size,
                            source=_on_canvas(image, images[0].size, extents))
            yield RunUpdate(1.0, f"Done in {seconds:.1f} s · seed {seed}{cached}",
                            preview_strip(images), run)
        else:
            preview = event.item
            step = preview.window * num_scales + preview.scale + 1
            where = (f" · window {preview.window + 1}/{preview.num_windows}"
                     if preview.num_windows > 1 else "")
            cached = " (cached)" if preview.restored else ""
            yield RunUpdate(step / (num_scales * preview.num_windows),
                            f"Scale {preview.scale + 1}/{num_scales}{where}{cached}",
                            preview_strip(preview.images))


def _on_canvas(image: Image.Image, size: tuple[int, int], extents: dict[str, int] | None
               ) -> Image.Image:
    """The source picture on a canvas of the result's size (grey where outpainting added)."""
    if image.size == size:
        return image
    canvas = Image.new("RGB", size, (128, 128, 128))
    sides = extents or {}
    canvas.paste(image.convert("RGB"), (int(sides.get("left", 0)), int(sides.get("top", 0))))
    return canvas


def calibrate(pipeline: Pipeline, repeats: int = 1) -> Timing:
    """Measure the time of one image at the fastest and the highest quality (also a warm-up).

    Args:
        pipeline: the loaded model.
        repeats: runs per setting after one warm-up run; the fastest counts.

    Returns:
        The :class:`Timing` used by the expected-time label.
    """
    max_steps = max_quality_steps(pipeline.patch_nums, pipeline.has_mask_branch)

    def seconds(steps: int) -> float:
        best = float("inf")
        for _ in range(repeats + 1):
            params = SamplingParams(steps, 1.5, 0, 0.0, 0, 1)
            begin = time.perf_counter()
            for _update in run_generate(pipeline, 0, params):
                pass
            best = min(best, time.perf_counter() - begin)
        return best

    base = seconds(0)
    extra_passes = refinement_passes(pipeline.patch_nums, max_steps)
    per_pass = max(seconds(max_steps) - base, 0.0) / extra_passes if extra_passes else 0.0
    logger.info("calibrated: %.3f s per image, %.4f s per refinement pass", base, per_pass)
    return Timing(base, per_pass)
