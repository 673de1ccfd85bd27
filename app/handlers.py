"""Event handlers of the UI: plain functions of their inputs (and the injected pipeline).

They turn control values into engine calls (through :mod:`app.params`, :mod:`app.editor` and
:mod:`app.runs`) and engine results into component values. Per-user data (the last
:class:`~app.runs.RunResult`, the selected gallery item) travels through ``gr.State``; the
pipeline is an argument, never a global. Every model handler is a generator that yields each
decoded scale. A failure never raises into Gradio (its error overlay would cover every output):
it becomes a status line, the previous results stay, and the log gets one
line for a user slip (a traceback only for a bug).

Images reach Gradio as PNG file paths written by :class:`~app.outputs.OutputFolder`, never as
PIL images or arrays: Gradio rewrites the cached file of a PIL output in place, which breaks
another user's download of the same picture (docs/RELIABILITY.md, item 8). Handlers that show
images are therefore generators, which delete their files once Gradio has copied them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from hmar_core import Pipeline
from hmar_core.editing import EditOptions
from hmar_core.variants import Sessions

from .components import RefusedPicture
from .editor import background_image, editor_value, mask_from_layers
from .errors import InputError, friendly_message
from .imaging import confidence_overlay
from .limits import MAX_PIXELS, check_picture_size
from .outputs import OutputFolder
from .params import (
    BRUSH_SIZE_RANGE,
    DEFAULT_BRUSH_SIZE,
    SamplingParams,
    Timing,
    clamp,
    class_choices,
    class_id_from_choice,
    edit_options,
    expected_time_label,
    max_quality_steps,
    outpaint_extents,
    random_seed,
    sampling_params,
)
from .runs import RunResult, RunUpdate, UserRun, run_edit, run_generate
from .streaming import StopSignal

__all__ = [
    "AREAS",
    "MAX_PIXELS",
    "EditControls",
    "RunOutputs",
    "BRUSH_COLOR",
    "background_image",
    "brush",
    "brush_size_update",
    "class_choices",
    "after_run",
    "class_edit_events",
    "edit_result",
    "editor_value",
    "gallery_items",
    "generate_events",
    "inpaint_events",
    "masked_edit_events",
    "outpaint_events",
    "mask_from_layers",
    "quality_label",
    "randomize_seed",
    "remember_selection",
    "request_stop",
    "save_gallery",
    "show_selection",
    "slip_outputs",
    "toggle_heatmap",
]

logger = logging.getLogger(__name__)

#: (preview, gallery, download files, status, result state, selected index): what every model
#: handler yields; the preview is a PNG path, the gallery a list of (PNG path, caption), the
#: downloads PNG paths.
RunOutputs = tuple[Any, Any, Any, str, Any, Any]
#: What an editing mode validates before running: (picture, mask, options, outpaint extents).
Prepared = tuple[Image.Image, np.ndarray | None, EditOptions, dict[str, int] | None]
#: The "Area to change" choices: (label, value).
AREAS = (("Painted area", "painted"), ("Everything except the painted area", "outside"),
         ("Whole picture", "all"))


#: The one colour of the mask brush (a bright pink that few pictures contain).
BRUSH_COLOR = "#ff2e88"


def brush(width: float = DEFAULT_BRUSH_SIZE) -> gr.Brush:
    """The mask brush whose strokes are ``width`` pixels of the picture wide (Gradio's
    ``default_size`` is the radius), in the one brush colour."""
    return gr.Brush(default_size=max(1, round(width / 2)), colors=[BRUSH_COLOR],
                    color_mode="fixed")


def brush_size_update(size: Any) -> Any:
    """The "Brush size" slider: the editor's next strokes get this size (clamped to
    :data:`~app.params.BRUSH_SIZE_RANGE`; a value that is not a number leaves it as it was).
    The picture and the painted strokes stay."""
    try:
        value = clamp("Brush size", size, *BRUSH_SIZE_RANGE, None, whole=True)
    except InputError:
        return gr.skip()
    return gr.update(brush=brush(value))


def randomize_seed() -> str:
    """The Random button: a fresh seed for the seed box (a text box: exact digits)."""
    return str(random_seed())


def quality_label(
    pipeline: Pipeline, steps: float, variants: float, timing: Timing | None = None
) -> str:
    """The expected-time text under the quality ↔ speed slider."""
    try:
        return expected_time_label(pipeline.patch_nums, int(steps), int(variants), timing,
                                   pipeline.sampler_config.refine_max_side)
    except (TypeError, ValueError):
        return ""


def _caption(result: RunResult, index: int) -> str:
    """``"#2 · cat · seed 43"``: which image, its class (when known) and its own seed (typed
    with Variants 1 and the same settings, it makes this image again)."""
    parts = [f"#{index + 1}"]
    if index < len(result.classes) and result.classes[index]:
        parts.append(result.classes[index])
    parts.append(f"seed {result.seed_of(index)}")
    return " · ".join(parts)


def gallery_items(result: RunResult | None, heatmap: bool) -> list[tuple[Image.Image, str]]:
    """The gallery value for a result, with the confidence heatmap blended in when asked."""
    if result is None:
        return []
    items = []
    for index, (image, confidence) in enumerate(zip(result.images, result.confidences)):
        caption = _caption(result, index)
        if heatmap and confidence:
            items.append((confidence_overlay(image, confidence), caption + " · confidence"))
        else:
            items.append((image, caption))
    return items


def _file_name(result: RunResult, index: int) -> str:
    """The download name of a result, unique per run and image (its own seed and index):
    ``hmar-class-edit-20261207-014512-3fa2-seed43-2.png``."""
    return (f"hmar-{result.mode.replace(' ', '-')}-{result.run_id}-seed{result.seed_of(index)}"
            f"-{index + 1}.png")


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


def request_stop(run: StopSignal | None) -> str:
    """The Stop button: ask this user's running work to end at its next scale.

    Returns:
        The new status line: "Stopped." when a run was going, else a note that nothing was.
    """
    if run is None or (isinstance(run, UserRun) and not run.running):
        return "Nothing is running: Stop only ends a run in progress."
    run.set()
    return "Stopped."


#: Results kept in the run history (newest first).
HISTORY_SIZE = 24


def after_run(result: RunResult | None, selected: int | None, history: list[Any] | None
              ) -> Iterator[tuple[Any, Any, Any, list[Any]]]:
    """After every run: re-sync the gallery's highlight, the before / after view and the run
    history (earlier results are kept there instead of being replaced).

    Yields one ``(gallery update, before/after value, history gallery, history state)``; the
    history state holds ``(run id, index, image, caption)`` tuples, newest first.
    """
    history = list(history or [])
    if result is not None and not any(entry[0] == result.run_id for entry in history):
        fresh = [(result.run_id, index, image, f"{result.mode} {_caption(result, index)}")
                 for index, image in enumerate(result.images)]
        history = (fresh + history)[:HISTORY_SIZE]
    with OutputFolder() as files:
        compare: Any = None
        if result is not None and result.source is not None and result.images:
            compare = (files.png(result.source, "before.png"),
                       files.png(result.images[0], "after.png"))
        shown = [(files.png(image, f"history-{run_id}-{index + 1}.png"), caption)
                 for run_id, index, image, caption in history]
        yield show_selection(selected), compare, shown, history


def show_selection(selected: int | None) -> Any:
    """After a run: show the remembered selection in the gallery (none after new results).

    The gallery keeps its own highlighted item across new values (clamped to the new length),
    which is how "Edit this result" used to load another picture than the highlighted one.
    """
    return gr.Gallery(selected_index=selected)


def remember_selection(event: gr.SelectData) -> int:
    """Gallery ``select``: remember which result the user clicked."""
    return int(event.index) if isinstance(event.index, int) else 0


def edit_result(result: RunResult | None, selected: int | None
                ) -> Iterator[tuple[Any, str, Any]]:
    """"Edit this result": put the selected result into the editor as the new background.

    Yields one ``(editor value, status, modes tab)``: the picture as an RGBA PNG path (deleted
    once Gradio has copied it), a status naming the result, and the Edit tab selected. With
    no result yet the editor and tab are left alone and the status says why.
    """
    if result is None or not result.images:
        yield (gr.skip(), _slip_status("Nothing to edit yet: run Generate (or an edit) first."),
               gr.skip())
        return
    index = selected if selected is not None and 0 <= selected < len(result.images) else 0
    with OutputFolder() as files:
        picture = files.png(result.images[index].convert("RGBA"), _file_name(result, index))
        yield ({"background": picture, "layers": [], "composite": picture},
               f"Editing result {_caption(result, index)}: paint the area to change.",
               gr.Tabs(selected="edit"))


def _save_pngs(result: RunResult, files: OutputFolder) -> list[str]:
    """Write the results as PNG files (the download list) and return their paths."""
    return [files.png(image, _file_name(result, index))
            for index, image in enumerate(result.images)]


def _slip_status(message: str, prefix: str = "Not run") -> str:
    """A user-facing problem as a status line: it covers no output (unlike ``gr.Error``'s
    overlay or a toast over the status and Stop button), and the last results stay usable."""
    return f"**{prefix}:** {message}"


def _log_failure(err: BaseException, what: str) -> str:
    """Log a failure (one line for user slips, a traceback for bugs); the user's message."""
    message = friendly_message(err)
    if isinstance(err, ValueError):  # InputError and the engine's argument checks
        logger.info("%s refused: %s", what, message)
    else:
        logger.exception("%s failed", what)
    return message


def slip_outputs(err: BaseException, what: str = "run") -> RunOutputs:
    """The outputs for a run that could not start: every result stays as it was."""
    status = _slip_status(_log_failure(err, what))
    return gr.skip(), gr.skip(), gr.skip(), status, gr.skip(), gr.skip()


def _done_message(message: str, notes: list[str]) -> str:
    return f"{message} · adjusted to the allowed range: {'; '.join(notes)}" if notes else message


#: Status-only updates (no new preview) reach the browser at most once per this many seconds:
#: each is a round of Gradio's output processing and an event on the stream (~25 ms of a
#: 40 ms GPU edit per update, 10 scales an edit). The first update, every preview and the
#: result always go out.
STATUS_SECONDS = 0.1


def stream_outputs(
    updates: Iterator[RunUpdate], heatmap: bool, progress: gr.Progress | None = None,
    notes: list[str] | None = None, status_seconds: float = STATUS_SECONDS,
) -> Iterator[RunOutputs]:
    """Map :class:`RunUpdate`s to component values; a failure becomes a status line.

    Intermediate updates change only the preview and the status (the gallery, downloads and
    state keep the previous run until the new one is finished); one without a preview is
    dropped when the previous one went out less than ``status_seconds`` ago. Images are
    yielded as PNG paths; the files of one value are deleted when the next update arrives
    (Gradio has copied them by then) and the rest when the stream ends. ``notes`` (clamped
    values) are appended to the status lines.
    """
    notes = notes or []
    shown: float | None = None  # when the last update went out
    with OutputFolder() as files:
        try:
            finished = False
            for update in updates:
                now = time.perf_counter()
                if update.result is None and update.preview is None and shown is not None \
                        and now - shown < status_seconds:
                    continue
                shown = now
                files.clear()
                if progress is not None:
                    progress(update.fraction, desc=update.message)
                preview = (files.png(update.preview, "preview.png")
                           if update.preview is not None else gr.skip())
                message = _done_message(update.message, notes)
                if update.result is None:
                    yield preview, gr.skip(), gr.skip(), message, gr.skip(), gr.skip()
                else:
                    finished = True
                    yield (preview, save_gallery(update.result, heatmap, files),
                           _save_pngs(update.result, files), message, update.result, None)
            if not finished:
                yield gr.skip(), gr.skip(), gr.skip(), "Stopped.", gr.skip(), gr.skip()
        except Exception as err:
            status = _slip_status(_log_failure(err, "run"), prefix="Failed")
            yield gr.skip(), gr.skip(), gr.skip(), status, gr.skip(), gr.skip()


def _guarded_run(
    start: Callable[[list[str]], Iterator[RunUpdate]],
    heatmap: bool,
    progress: gr.Progress | None,
    stop: StopSignal | None,
) -> Iterator[RunOutputs]:
    """Validate via ``start(notes) -> updates`` (a slip leaves the outputs as they are), then
    stream the run, marking this user's run as in progress meanwhile."""
    notes: list[str] = []
    try:
        updates = start(notes)
    except Exception as err:
        yield slip_outputs(err)
        return
    if isinstance(stop, UserRun):
        stop.begin()
    elif stop is not None:
        stop.clear()
    try:
        yield from stream_outputs(updates, heatmap, progress, notes)
    finally:
        if isinstance(stop, UserRun):
            stop.end()


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
    timing: Timing | None = None,
) -> Iterator[RunOutputs]:
    """Generate mode: validate the controls, then stream previews and the final gallery."""

    def start(notes: list[str]) -> Iterator[RunUpdate]:
        class_id = class_id_from_choice(class_choice, pipeline.num_classes)
        params = sampling_params(steps, cfg, top_k, top_p, seed, variants,
                                 _max_steps(pipeline), notes)
        return run_generate(pipeline, class_id, params, stop, timing)

    yield from _guarded_run(start, heatmap, progress, stop)


def _max_steps(pipeline: Pipeline) -> int:
    return max_quality_steps(pipeline.patch_nums, pipeline.has_mask_branch,
                             pipeline.sampler_config.refine_max_side)


@dataclass(frozen=True)
class EditControls:
    """The controls every editing mode shares (the mask accordion and sampling controls).

    Attributes:
        quality, cfg, top_k, top_p, seed, variants: sampling controls (see
            :func:`app.params.sampling_params`).
        grow, feather, only_masked, padding: the "Mask options" accordion.
        heatmap: overlay the confidence heatmap on the results.
        area: which part to change, one of the values of :data:`AREAS` ("painted": the
            strokes; "outside": everything else, i.e. the inverted mask; "all": the whole
            picture).
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
    area: str = "painted"

    def sampling(self, pipeline: Pipeline, notes: list[str] | None = None) -> SamplingParams:
        """The validated sampling parameters (clamped values noted in ``notes``)."""
        return sampling_params(self.quality, self.cfg, self.top_k, self.top_p, self.seed,
                               self.variants, _max_steps(pipeline), notes)


def _picture(value: Any, need_mask: bool, area: str = "painted"
             ) -> tuple[Image.Image, np.ndarray | None]:
    """The uploaded picture and the mask of the area to change, with friendly errors when
    something is missing."""
    if isinstance(value, RefusedPicture):
        raise InputError(value.reason)
    image, mask = editor_value(value)
    if image is None:
        raise InputError("Upload a picture first: drop it on the editor or click it.")
    check_picture_size(image.width, image.height, MAX_PIXELS)  # app/limits.py
    if area not in {value for _, value in AREAS}:
        raise InputError(f"Unknown area {area!r}: pick one from the list.")
    if area == "all":
        return image, np.ones((image.height, image.width), dtype=bool)
    if area == "outside":
        if mask is None:
            raise InputError("Paint over the area to keep first (the rest will change).")
        return image, ~mask
    if need_mask and mask is None:
        raise InputError("Paint over the area to change with the brush first "
                         "(or choose “Whole picture” under Mask options).")
    return image, mask


def _edit_events(
    pipeline: Pipeline,
    mode: str,
    prepare: Callable[[list[str]], Prepared],
    controls: EditControls,
    session: Sessions,
    progress: gr.Progress | None,
    stop: StopSignal | None,
    timing: Timing | None = None,
) -> Iterator[RunOutputs]:
    """Validate via ``prepare(notes) -> (image, mask, options, extents)``, then stream the
    edit."""

    def start(notes: list[str]) -> Iterator[RunUpdate]:
        image, mask, options, extents = prepare(notes)
        return run_edit(pipeline, mode, image, mask, options, extents=extents,
                        session=session, stop=stop, timing=timing)

    yield from _guarded_run(start, controls.heatmap, progress, stop)


def masked_edit_events(
    mode: str,
    pipeline: Pipeline,
    session: Sessions,
    editor: Any,
    class_choice: Any,
    strength: float,
    controls: EditControls,
    progress: gr.Progress | None = None,
    stop: StopSignal | None = None,
    timing: Timing | None = None,
) -> Iterator[RunOutputs]:
    """Inpaint (``mode="inpaint"``: the painted area, optionally guided by a class) and class
    edit (``"class edit"``: the picture or the painted area as the target class): the same
    steps, differing only in what they require."""

    def prepare(notes: list[str]) -> Prepared:
        image, mask = _picture(editor, need_mask=mode == "inpaint", area=controls.area)
        if (mode == "class edit"
                and class_id_from_choice(class_choice, pipeline.num_classes) is None):
            raise InputError("Pick the target class.")
        revise = pipeline.class_edit_defaults().revise if mode == "class edit" else None
        return image, mask, _options(pipeline, controls, class_choice, strength, notes,
                                     revise), None

    yield from _edit_events(pipeline, mode, prepare, controls, session, progress, stop, timing)


def inpaint_events(*args: Any, **kwargs: Any) -> Iterator[RunOutputs]:
    """Inpaint mode: :func:`masked_edit_events` with ``mode="inpaint"``."""
    return masked_edit_events("inpaint", *args, **kwargs)


def class_edit_events(*args: Any, **kwargs: Any) -> Iterator[RunOutputs]:
    """Class edit / restyle: :func:`masked_edit_events` with ``mode="class edit"``."""
    return masked_edit_events("class edit", *args, **kwargs)


def outpaint_events(
    pipeline: Pipeline,
    editor: Any,
    sides: list[str] | None,
    extent: float,
    class_choice: Any,
    controls: EditControls,
    progress: gr.Progress | None = None,
    stop: StopSignal | None = None,
    timing: Timing | None = None,
) -> Iterator[RunOutputs]:
    """Outpaint mode: extend the picture towards the ticked sides and fill the new area."""

    def prepare(notes: list[str]) -> Prepared:
        image, _ = _picture(editor, need_mask=False)
        extents = outpaint_extents(sides, extent, image.size, notes)
        options = _options(pipeline, controls, class_choice, 0, notes)
        return image, None, options, extents

    yield from _edit_events(pipeline, "outpaint", prepare, controls, None, progress, stop,
                            timing)


def _options(pipeline: Pipeline, controls: EditControls, class_choice: Any,
             strength: float, notes: list[str], revise: float | None = None) -> EditOptions:
    """The engine options of an edit from the shared controls and the mode's own ones."""
    return edit_options(
        controls.sampling(pipeline, notes),
        class_id=class_id_from_choice(class_choice, pipeline.num_classes),
        strength=strength, num_scales=len(pipeline.patch_nums), grow=controls.grow,
        feather=controls.feather, only_masked=bool(controls.only_masked),
        padding=controls.padding, revise=revise, notes=notes,
    )
