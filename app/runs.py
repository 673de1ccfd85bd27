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
from hmar_core.editing import EditOptions, EditPreview, EditResult
from hmar_core.editing.outpaint import plan_outpaint_windows
from hmar_core.variants import Sessions, edit_variants, generate_variants, outpaint_variants

from .imaging import ConfidenceTile, preview_strip, to_pil_images
from .params import SamplingParams, Timing, max_quality_steps, refinement_passes, work_estimate
from .streaming import Finished, StopSignal, stream_work

__all__ = ["EDIT_MODES", "RunResult", "RunUpdate", "UserRun", "calibrate", "new_run_id",
           "run_edit", "run_generate", "seeds_text"]

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
        seed: the run's seed (variant 0's).
        seeds: per image, its own seed (:func:`hmar_core.variants.variant_seed`: the run's
            seed + its index); typed with Variants 1, it gives that image again.
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
    seeds: tuple[int, ...] = ()

    def seed_of(self, index: int) -> int:
        """The seed of image ``index`` (the run's seed when the images have none of their
        own)."""
        return self.seeds[index] if 0 <= index < len(self.seeds) else self.seed


def seeds_text(seeds: tuple[int, ...] | list[int]) -> str:
    """The seeds of a run for the status line: ``"seed 42"`` or ``"seed 42 (+1 per variant:
    42–45)"`` (seeds that wrap past the largest seed are listed one by one)."""
    if not seeds:
        return "seed ?"
    first = f"seed {seeds[0]}"
    if len(seeds) == 1:
        return first
    consecutive = all(b == a + 1 for a, b in zip(seeds, seeds[1:]))
    shown = f"{seeds[0]}–{seeds[-1]}" if consecutive else ", ".join(map(str, seeds))
    return f"{first} (+1 per variant: {shown})"


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
    """A scale of one variant (generate), decoded when it is shown (else ``images`` is
    ``None``)."""

    variant: int
    scale: int
    images: list[Image.Image] | None


@dataclass(frozen=True)
class _EditStep:
    """A scale of one window of one variant (edits); ``shown``: its images were decoded (in
    the worker) for the live preview."""

    variant: int
    preview: EditPreview
    shown: bool = True


@dataclass(frozen=True)
class _VariantDone:
    """A variant is finished: its final images join the preview strip."""

    variant: int
    images: list[Image.Image]


class _Strip:
    """The live preview: the finished variants, then the one being made."""

    def __init__(self) -> None:
        self.finished: list[Image.Image] = []

    def show(self, current: list[Image.Image]) -> Image.Image:
        return preview_strip(self.finished + current)

    def add(self, images: list[Image.Image]) -> Image.Image:
        self.finished.extend(images)
        return preview_strip(self.finished)


def _variant_prefix(index: int, count: int) -> str:
    """``"Variant 2/4 · "`` (nothing for a single picture)."""
    return f"Variant {index + 1}/{count} · " if count > 1 else ""


#: The live preview shows at most one decoded scale per this many seconds (the first at once);
#: the status and progress still move at every scale. Decoding a preview costs a VQ-VAE pass
#: (about 75 ms of a 1 s edit on two CPU cores), so showing every scale doubled a CPU edit.
PREVIEW_SECONDS = 0.5


class _PreviewClock:
    """Decides which scales get a decoded preview: the first, then one per ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last: float | None = None

    def due(self) -> bool:
        now = time.perf_counter()
        if self.last is not None and now - self.last < self.seconds:
            return False
        self.last = now
        return True


def _preview_from_state(pipeline: Pipeline, variant: int, state: ScaleState) -> _ScalePreview:
    """Decode the running latent of a scale into images (runs in the worker thread)."""
    images = pipeline.decode_latent(state.f_hat)  # (B, 3, H, W) in [0, 1], on its engine
    return _ScalePreview(variant, state.scale, to_pil_images(images, (0.0, 1.0)))


def run_generate(
    pipeline: Pipeline, class_id: int | None, params: SamplingParams,
    stop: StopSignal | None = None, timing: Timing | None = None,
    preview_seconds: float = PREVIEW_SECONDS,
) -> Iterator[RunUpdate]:
    """Generate ``params.variants`` images of one class, with live previews of its scales.

    The variants run one after the other, variant ``i`` with seed ``params.seed + i``
    (:mod:`hmar_core.variants`), so each can be made again alone with Variants 1.

    Args:
        pipeline: the loaded model.
        class_id: the class, or ``None`` for a random class per image.
        params: validated sampling controls.
        stop: the user's Stop flag (the run ends at the next scale once it is set).
        timing: measured costs, for the expected time in the first status line.
        preview_seconds: at most one decoded preview per this many seconds (0: every scale).

    Yields:
        One :class:`RunUpdate` per scale of every variant (with a preview image when one is
        due), then one with the :class:`RunResult`.
    """
    num_scales, count = len(pipeline.patch_nums), params.variants
    started = time.perf_counter()
    clock = _PreviewClock(preview_seconds)

    def work(report: Callable[[_ScalePreview | _VariantDone], None]
             ) -> tuple[list[GenerateOutput], list[Image.Image]]:
        def on_scale(variant: int, state: ScaleState) -> None:
            if state.scale == num_scales - 1:  # the last scale is the result itself
                return
            report(_preview_from_state(pipeline, variant, state) if clock.due()
                   else _ScalePreview(variant, state.scale, None))

        pictures: list[Image.Image] = []  # made here, in the worker (app.streaming)

        def on_done(variant: int, out: GenerateOutput) -> None:
            images = to_pil_images(out.images)
            pictures.extend(images)
            report(_VariantDone(variant, images))

        outputs = generate_variants(
            pipeline, class_id, seed=params.seed, count=count, cfg=params.cfg,
            top_k=params.top_k, top_p=params.top_p, steps=params.steps, on_scale=on_scale,
            on_done=on_done)
        return outputs, pictures

    estimate = work_estimate(pipeline.patch_nums, params.steps, 1, count, timing,
                             pipeline.sampler_config.refine_max_side)
    yield RunUpdate(0.0, f"Starting: {estimate} · {seeds_text([params.seed])}…")
    strip = _Strip()
    for event in stream_work(work, stop):
        if isinstance(event, Finished):
            yield _generate_result(pipeline, *event.value, started)
        elif isinstance(event.item, _VariantDone):
            done = event.item.variant + 1
            yield RunUpdate(done / count, f"Variant {done}/{count} done",
                            strip.add(event.item.images))
        else:
            item = event.item
            tokens = pipeline.patch_nums[item.scale]
            yield RunUpdate((item.variant * num_scales + item.scale + 1) / (count * num_scales),
                            f"{_variant_prefix(item.variant, count)}Scale {item.scale + 1}/"
                            f"{num_scales} ({tokens}×{tokens} tokens)",
                            None if item.images is None else strip.show(item.images))


def _generate_result(pipeline: Pipeline, outputs: list[GenerateOutput],
                     pictures: list[Image.Image], started: float) -> RunUpdate:
    """The last update of a Generate run: every variant's image, seed and class."""
    images = tuple(pictures)
    side = pipeline.image_size
    confidences = tuple((ConfidenceTile(c.float().cpu().numpy(), 0, 0, side),)
                        for out in outputs for c in out.confidence)
    seeds = tuple(out.seed for out in outputs for _ in range(out.images.shape[0]))
    classes = tuple(_class_name(pipeline, int(i)) for out in outputs for i in out.labels)
    seconds = time.perf_counter() - started
    names = ", ".join(sorted(set(classes)))
    result = RunResult("generate", images, confidences, seeds[0], seconds, classes,
                       size=side, seeds=seeds)
    return RunUpdate(1.0, f"Done in {seconds:.1f} s · {seeds_text(seeds)} · {names}",
                     preview_strip(list(images)), result)


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


def _edit_work(
    pipeline: Pipeline, mode: str, image: Image.Image, mask: np.ndarray | None,
    options: EditOptions, extents: dict[str, int] | None, session: Sessions,
    finals: dict[tuple[int, int], torch.Tensor], clock: _PreviewClock,
) -> Callable[[Callable[[_EditStep | _VariantDone], None]], list[EditResult]]:
    """The model work of an edit for :func:`stream_work`: every variant, one after the other
    (:mod:`hmar_core.variants`); ``finals`` receives each window's final confidence, and the
    previews that ``clock`` lets through are decoded here, in the worker."""

    def work(report: Callable[[_EditStep | _VariantDone], None]) -> list[EditResult]:
        def on_preview(variant: int, preview: EditPreview) -> None:
            if preview.scale == preview.num_scales - 1:
                finals[(variant, preview.window)] = preview.confidence
            shown = clock.due()
            if shown:
                preview.images  # noqa: B018 - decode now, in the worker thread
            report(_EditStep(variant, preview, shown))

        def on_done(variant: int, result: EditResult) -> None:
            report(_VariantDone(variant, list(result.images)))

        if mode == "outpaint":
            return outpaint_variants(pipeline, image, extents or {}, options,
                                     on_preview=on_preview, on_done=on_done)
        return edit_variants(pipeline, image, mask, options, session=session,
                             on_preview=on_preview, on_done=on_done)

    return work


def run_edit(
    pipeline: Pipeline,
    mode: str,
    image: Image.Image,
    mask: np.ndarray | None,
    options: EditOptions,
    *,
    extents: dict[str, int] | None = None,
    session: Sessions = None,
    stop: StopSignal | None = None,
    timing: Timing | None = None,
    preview_seconds: float = PREVIEW_SECONDS,
) -> Iterator[RunUpdate]:
    """Inpaint, outpaint or class-edit one picture, with live previews of its scales.

    The ``options.num_variants`` variants run one after the other, variant ``i`` with seed
    ``options.seed + i`` (:mod:`hmar_core.variants`).

    Args:
        pipeline: the loaded model.
        mode: one of :data:`EDIT_MODES`.
        image: the user's picture, any size and mode (the engine fits it to the model).
        mask: bool (H, W), True = regenerate; ``None`` = the whole picture (class edit).
        options: engine options (class, seed, steps, strength, grow, feather, fit, ...).
        extents: outpaint only, pixels per side ``{"left", "right", "top", "bottom"}``.
        session: the user's :class:`~hmar_core.variants.VariantSessions` (re-edits resume
            every variant's unchanged coarse scales), or one ``EditSession``.
        stop: the user's Stop flag (the run ends at the next scale once it is set).
        timing: measured costs, for the expected time (from the number of model windows).
        preview_seconds: at most one decoded preview per this many seconds (0: every scale).

    Yields:
        One :class:`RunUpdate` per scale (and window, and variant; with a preview image when
        one is due), then one with the :class:`RunResult`.
    """
    if mode not in EDIT_MODES:
        raise ValueError(f"unknown edit mode {mode!r}; use one of {EDIT_MODES}")
    num_scales, count = len(pipeline.patch_nums), options.num_variants
    started = time.perf_counter()
    finals: dict[tuple[int, int], torch.Tensor] = {}
    work = _edit_work(pipeline, mode, image, mask, options, extents, session, finals,
                      _PreviewClock(preview_seconds))
    windows = 1
    if mode == "outpaint":
        sides = extents or {}
        windows = max(1, len(plan_outpaint_windows(image.height, image.width, **{
            side: int(sides.get(side, 0)) for side in ("left", "right", "top", "bottom")})))
    estimate = work_estimate(pipeline.patch_nums, options.steps or 0, windows, count, timing,
                             pipeline.sampler_config.refine_max_side)
    yield RunUpdate(0.0, f"Starting {mode}: {estimate}…")
    strip = _Strip()
    for event in stream_work(work, stop):
        if isinstance(event, Finished):
            yield _edit_result(pipeline, mode, event.value, finals, started, image, extents,
                               options.class_id)
        elif isinstance(event.item, _VariantDone):
            done = event.item.variant + 1
            yield RunUpdate(done / count, f"Variant {done}/{count} done",
                            strip.add(event.item.images))
        else:
            variant, preview = event.item.variant, event.item.preview
            step = preview.window * num_scales + preview.scale + 1
            per_variant = num_scales * preview.num_windows
            where = (f" · window {preview.window + 1}/{preview.num_windows}"
                     if preview.num_windows > 1 else "")
            cached = " (cached)" if preview.restored else ""
            yield RunUpdate((variant * per_variant + step) / (count * per_variant),
                            f"{_variant_prefix(variant, count)}Scale {preview.scale + 1}/"
                            f"{num_scales}{where}{cached}",
                            strip.show(preview.images) if event.item.shown else None)


def _edit_result(
    pipeline: Pipeline, mode: str, results: list[EditResult],
    finals: dict[tuple[int, int], torch.Tensor], started: float, image: Image.Image,
    extents: dict[str, int] | None, class_id: int | None,
) -> RunUpdate:
    """The last update of an edit: every variant's image, confidence tiles and seed."""
    seconds = time.perf_counter() - started
    images = tuple(picture for result in results for picture in result.images)
    tiles: list[tuple[ConfidenceTile, ...]] = []
    for variant, result in enumerate(results):
        windows = {window: value for (owner, window), value in finals.items() if owner == variant}
        tiles.extend(_edit_tiles(result, windows))
    seeds = tuple(result.seed if result.seed is not None else 0
                  for result in results for _ in result.images)
    resumed = max(result.resumed_from for result in results)
    cached = f" · reused {resumed + 1} cached scale(s)" if resumed >= 0 else ""
    classes = (_class_name(pipeline, class_id),) * len(images)
    run = RunResult(mode, images, tuple(tiles), seeds[0], seconds, classes,
                    size=pipeline.image_size, source=_on_canvas(image, images[0].size, extents),
                    seeds=seeds)
    return RunUpdate(1.0, f"Done in {seconds:.1f} s · {seeds_text(seeds)}{cached}",
                     preview_strip(list(images)), run)


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
    max_steps = max_quality_steps(pipeline.patch_nums, pipeline.has_mask_branch,
                             pipeline.sampler_config.refine_max_side)

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
    extra_passes = refinement_passes(pipeline.patch_nums, max_steps,
                                     pipeline.sampler_config.refine_max_side)
    per_pass = max(seconds(max_steps) - base, 0.0) / extra_passes if extra_passes else 0.0
    logger.info("calibrated: %.3f s per image, %.4f s per refinement pass", base, per_pass)
    return Timing(base, per_pass)
