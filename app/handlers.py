"""Event handlers of the UI: plain functions of their inputs (and the injected pipeline).

They turn control values into engine calls (through :mod:`app.params`, :mod:`app.editor` and
:mod:`app.runs`) and engine results into component values. Per-user data (the last
:class:`~app.runs.RunResult`, the selected gallery item) travels through ``gr.State``; the
pipeline is an argument, never a global. Every model handler is a generator that yields each
decoded scale, and maps any failure to a short ``gr.Error`` (the traceback goes to the log only).

Images reach Gradio as PNG file paths written by :class:`~app.outputs.OutputFolder`, never as
PIL images or arrays: Gradio rewrites the cached file of a PIL output in place, which breaks
another user's download of the same picture (docs/RELIABILITY.md, item 8). Handlers that show
images are therefore generators, which delete their files once Gradio has copied them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from hmar_core import Pipeline
from hmar_core.editing import EditOptions, EditSession

from .editor import background_image, editor_value, mask_from_layers
from .errors import InputError, friendly_message
from .imaging import confidence_overlay
from .limits import MAX_PIXELS, check_picture_size
from .outputs import OutputFolder
from .params import (
    SamplingParams,
    Timing,
    class_choices,
    class_id_from_choice,
    edit_options,
    expected_time_label,
    max_quality_steps,
    outpaint_extents,
    random_seed,
    sampling_params,
)
from .runs import RunResult, RunUpdate, run_edit, run_generate
from .streaming import StopSignal

__all__ = [
    "MAX_PIXELS",
    "EditControls",
    "RunOutputs",
    "background_image",
    "class_choices",
    "class_edit_events",
    "edit_result",
    "editor_value",
    "gallery_items",
    "generate_events",
    "inpaint_events",
    "outpaint_events",
    "mask_from_layers",
    "quality_label",
    "randomize_seed",
    "remember_selection",
    "request_stop",
    "save_gallery",
    "toggle_heatmap",
]

logger = logging.getLogger(__name__)

#: (preview, gallery, download files, status, result state): what every model handler yields;
#: the preview is a PNG path, the gallery a list of (PNG path, caption), the downloads PNG paths.
RunOutputs = tuple[Any, Any, Any, str, Any]
#: What an editing mode validates before running: (picture, mask, options, outpaint extents).
Prepared = tuple[Image.Image, np.ndarray | None, EditOptions, dict[str, int] | None]


def randomize_seed() -> int:
    """The 🎲 button: a fresh seed for the seed box."""
    return random_seed()


def quality_label(
    pipeline: Pipeline, steps: float, variants: float, timing: Timing | None = None
) -> str:
    """The expected-time text under the quality ↔ speed slider."""
    try:
        return expected_time_label(pipeline.patch_nums, int(steps), int(variants), timing)
    except (TypeError, ValueError):
        return ""


def gallery_items(result: RunResult | None, heatmap: bool) -> list[tuple[Image.Image, str]]:
    """The gallery value for a result, with the confidence heatmap blended in when asked."""
    if result is None:
        return []
    items = []
    for index, (image, confidence) in enumerate(zip(result.images, result.confidences)):
        caption = f"{result.mode} #{index + 1} · seed {result.seed}"
        if heatmap and confidence:
            items.append((confidence_overlay(image, confidence), caption + " · confidence"))
        else:
            items.append((image, caption))
    return items


def _file_name(result: RunResult, index: int) -> str:
    """The download name of a result, e.g. ``hmar-class-edit-seed42-1.png``."""
    return f"hmar-{result.mode.replace(' ', '-')}-seed{result.seed}-{index + 1}.png"


def save_gallery(result: RunResult | None, heatmap: bool, files: OutputFolder
                 ) -> list[tuple[str, str]]:
    """:func:`gallery_items` written as PNG files: the gallery value Gradio receives."""
    if result is None:
        return []
    items = []
    for index, (image, caption) in enumerate(gallery_items(result, heatmap)):
        name = _file_name(result, index)
        if heatmap and result.confidences[index]:  # as gallery_items: the overlay
            name = name.replace(".png", "-confidence.png")
        items.append((files.png(image, name), caption))
    return items


def toggle_heatmap(result: RunResult | None, heatmap: bool
                   ) -> Iterator[list[tuple[str, str]]]:
    """The heatmap checkbox: redraw the gallery from the stored result (no model work).

    A generator of one value, so that its files are deleted once Gradio has copied them.
    """
    with OutputFolder() as files:
        yield save_gallery(result, heatmap, files)


def request_stop(stop: StopSignal | None) -> str:
    """The Stop button: ask this user's running work to end at its next scale.

    Returns:
        The new status line.
    """
    if stop is not None:
        stop.set()
    return "Stopped."


def remember_selection(event: gr.SelectData) -> int:
    """Gallery ``select``: remember which result the user clicked."""
    return int(event.index) if isinstance(event.index, int) else 0


def edit_result(result: RunResult | None, selected: int | None) -> Iterator[dict[str, Any]]:
    """"Edit this result": put the selected result into the editor as the new background.

    A generator of one value (the editor value, with the picture as an RGBA PNG path), so that
    its file is deleted once Gradio has copied it.

    Raises:
        gr.Error: no result yet.
    """
    if result is None or not result.images:
        raise gr.Error("Nothing to edit yet: run Generate (or an edit) first.",
                       print_exception=False)
    index = selected if selected is not None and 0 <= selected < len(result.images) else 0
    with OutputFolder() as files:
        picture = files.png(result.images[index].convert("RGBA"), _file_name(result, index))
        yield {"background": picture, "layers": [], "composite": picture}


def _save_pngs(result: RunResult, files: OutputFolder) -> list[str]:
    """Write the results as PNG files (the download list) and return their paths."""
    return [files.png(image, _file_name(result, index))
            for index, image in enumerate(result.images)]


def stream_outputs(
    updates: Iterator[RunUpdate], heatmap: bool, progress: gr.Progress | None = None
) -> Iterator[RunOutputs]:
    """Map :class:`RunUpdate`s to component values; failures become a friendly ``gr.Error``.

    Intermediate updates change only the preview and the status (the gallery, downloads and
    state keep the previous run until the new one is finished). Images are yielded as PNG
    paths; the files of one value are deleted when the next update arrives (Gradio has copied
    them by then) and the rest when the stream ends.
    """
    with OutputFolder() as files:
        try:
            finished = False
            for update in updates:
                files.clear()
                if progress is not None:
                    progress(update.fraction, desc=update.message)
                preview = (files.png(update.preview, "preview.png")
                           if update.preview is not None else gr.skip())
                if update.result is None:
                    yield preview, gr.skip(), gr.skip(), update.message, gr.skip()
                else:
                    finished = True
                    yield (preview, save_gallery(update.result, heatmap, files),
                           _save_pngs(update.result, files), update.message, update.result)
            if not finished:
                yield gr.skip(), gr.skip(), gr.skip(), "Stopped.", gr.skip()
        except gr.Error:
            raise
        except Exception as err:
            logger.exception("run failed")
            raise gr.Error(friendly_message(err), print_exception=False) from None


def generate_events(
    pipeline: Pipeline,
    class_choice: Any,
    steps: float,
    cfg: float,
    top_k: float,
    top_p: float,
    seed: Any,
    variants: float,
    heatmap: bool,
    progress: gr.Progress | None = None,
    stop: StopSignal | None = None,
) -> Iterator[RunOutputs]:
    """Generate mode: validate the controls, then stream previews and the final gallery."""
    try:
        class_id = class_id_from_choice(class_choice, pipeline.num_classes)
        params = sampling_params(steps, cfg, top_k, top_p, seed, variants,
                                 _max_steps(pipeline))
    except Exception as err:
        raise gr.Error(friendly_message(err), print_exception=False) from None
    if stop is not None:
        stop.clear()
    yield from stream_outputs(run_generate(pipeline, class_id, params, stop), heatmap, progress)


def _max_steps(pipeline: Pipeline) -> int:
    return max_quality_steps(pipeline.patch_nums, pipeline.has_mask_branch)


@dataclass(frozen=True)
class EditControls:
    """The controls every editing mode shares (the mask accordion and sampling controls).

    Attributes:
        quality, cfg, top_k, top_p, seed, variants: sampling controls (see
            :func:`app.params.sampling_params`).
        grow, feather, only_masked, padding: the "Mask options" accordion.
        heatmap: overlay the confidence heatmap on the results.
    """

    quality: float
    cfg: float
    top_k: float
    top_p: float
    seed: Any
    variants: float
    grow: float = 1
    feather: float = 8
    only_masked: bool = False
    padding: float = 32
    heatmap: bool = False

    def sampling(self, pipeline: Pipeline) -> SamplingParams:
        """The validated sampling parameters."""
        return sampling_params(self.quality, self.cfg, self.top_k, self.top_p, self.seed,
                               self.variants, _max_steps(pipeline))


def _picture(value: Any, need_mask: bool) -> tuple[Image.Image, np.ndarray | None]:
    """The uploaded picture and painted mask, with friendly errors when something is missing."""
    image, mask = editor_value(value)
    if image is None:
        raise InputError("Upload a picture first: drop it on the editor or click it.")
    check_picture_size(image.width, image.height, MAX_PIXELS)  # app/limits.py
    if need_mask and mask is None:
        raise InputError("Paint over the area to change with the brush first.")
    return image, mask


def _edit_events(
    pipeline: Pipeline,
    mode: str,
    prepare: Callable[[], Prepared],
    controls: EditControls,
    session: EditSession | None,
    progress: gr.Progress | None,
    stop: StopSignal | None,
) -> Iterator[RunOutputs]:
    """Validate via ``prepare() -> (image, mask, options, extents)``, then stream the edit."""
    try:
        image, mask, options, extents = prepare()
    except Exception as err:
        raise gr.Error(friendly_message(err), print_exception=False) from None
    if stop is not None:
        stop.clear()
    updates = run_edit(pipeline, mode, image, mask, options, extents=extents, session=session,
                       stop=stop)
    yield from stream_outputs(updates, controls.heatmap, progress)


def inpaint_events(
    pipeline: Pipeline,
    session: EditSession | None,
    editor: Any,
    class_choice: Any,
    strength: float,
    controls: EditControls,
    progress: gr.Progress | None = None,
    stop: StopSignal | None = None,
) -> Iterator[RunOutputs]:
    """Inpaint mode: regenerate the painted area (optionally guided by a class)."""

    def prepare() -> Prepared:
        image, mask = _picture(editor, need_mask=True)
        options = _options(pipeline, controls, class_choice, strength)
        return image, mask, options, None

    yield from _edit_events(pipeline, "inpaint", prepare, controls, session, progress, stop)


def outpaint_events(
    pipeline: Pipeline,
    editor: Any,
    sides: list[str] | None,
    extent: float,
    class_choice: Any,
    controls: EditControls,
    progress: gr.Progress | None = None,
    stop: StopSignal | None = None,
) -> Iterator[RunOutputs]:
    """Outpaint mode: extend the picture towards the ticked sides and fill the new area."""

    def prepare() -> Prepared:
        image, _ = _picture(editor, need_mask=False)
        extents = outpaint_extents(sides, extent, image.size)
        options = _options(pipeline, controls, class_choice, 0)
        return image, None, options, extents

    yield from _edit_events(pipeline, "outpaint", prepare, controls, None, progress, stop)


def class_edit_events(
    pipeline: Pipeline,
    session: EditSession | None,
    editor: Any,
    class_choice: Any,
    strength: float,
    controls: EditControls,
    progress: gr.Progress | None = None,
    stop: StopSignal | None = None,
) -> Iterator[RunOutputs]:
    """Class edit / restyle: regenerate the picture (or the painted area) as another class."""

    def prepare() -> Prepared:
        image, mask = _picture(editor, need_mask=False)
        if class_id_from_choice(class_choice, pipeline.num_classes) is None:
            raise InputError("Pick the target class.")
        options = _options(pipeline, controls, class_choice, strength)
        return image, mask, options, None

    yield from _edit_events(pipeline, "class edit", prepare, controls, session, progress, stop)


def _options(pipeline: Pipeline, controls: EditControls, class_choice: Any,
             strength: float) -> EditOptions:
    """The engine options of an edit from the shared controls and the mode's own ones."""
    return edit_options(
        controls.sampling(pipeline),
        class_id=class_id_from_choice(class_choice, pipeline.num_classes),
        strength=strength, num_scales=len(pipeline.patch_nums), grow=controls.grow,
        feather=controls.feather, only_masked=bool(controls.only_masked),
        padding=controls.padding,
    )
