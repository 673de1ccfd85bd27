"""The Gradio layout: ``build_demo(pipeline) -> gr.Blocks``.

Two top-level modes: **Generate** (a class and a button: no editor) and **Edit** (the picture
editor with its Inpaint / Outpaint / Class edit tabs and the mask options). The sampling
controls are shared; the outputs (status, Stop, results with "Edit this result", live preview,
before/after, downloads) stay on the right. Only layout lives here; the events are wired in
:mod:`app.wiring` and the logic is in :mod:`app.handlers`. The pipeline is injected (loaded once
by ``launch.py``); this module never launches anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.utils import _parse_file_size

from hmar_core import Pipeline
from hmar_core.variants import VariantSessions

from . import handlers
from .components import PictureEditor, RangeSlider
from .page import ALERT_ID, EDITOR_ID, page_script
from .params import (
    BRUSH_SIZE_RANGE,
    CFG_RANGE,
    DEFAULT_BRUSH_SIZE,
    EXTENT_RANGE,
    FEATHER_RANGE,
    GROW_RANGE,
    MAX_VARIANTS,
    NO_CLASS,
    PADDING_RANGE,
    TOP_K_RANGE,
    Timing,
    class_choices,
    class_strength_info,
    max_quality_steps,
)
from .runs import UserRun

__all__ = ["MAX_FILE_SIZE", "QUEUE_SIZE", "Controls", "Outputs", "build_demo"]

logger = logging.getLogger(__name__)

#: Upload limit passed to ``launch(max_file_size=...)``.
MAX_FILE_SIZE = "20mb"
#: Runs that may wait in the queue before new ones are turned away.
QUEUE_SIZE = 16
#: Images per run when the page opens.
DEFAULT_VARIANTS = 2
#: The "random class" entry of the Generate class list (plain text: no emoji font needed).
RANDOM_CLASS = "Random class"

_INTRO = (
    "# HMAR Studio\n"
    "Next-scale image generation and training-free editing. **Generate** makes new pictures; "
    "**Edit** changes one you upload (or one of your results). Watch each picture sharpen "
    "scale by scale."
)


@dataclass
class Controls:
    """The input components, by name (what :mod:`app.wiring` connects)."""

    modes: Any
    gen_class: Any
    generate_btn: Any
    editor: Any
    brush_size: Any
    edit_modes: Any
    inpaint_class: Any
    inpaint_strength: Any
    inpaint_btn: Any
    out_sides: Any
    out_extent: Any
    out_class: Any
    outpaint_btn: Any
    edit_class: Any
    edit_strength: Any
    class_edit_btn: Any
    area: Any
    grow: Any
    feather: Any
    only_masked: Any
    padding: Any
    quality: Any
    quality_text: Any
    seed: Any
    dice: Any
    variants: Any
    cfg: Any
    top_k: Any
    top_p: Any


@dataclass
class Outputs:
    """The output components, by name."""

    status: Any
    stop_btn: Any
    gallery: Any
    to_editor_btn: Any
    heatmap: Any
    preview: Any
    downloads: Any
    compare: Any
    history: Any


def _dropdown(choices: list[tuple[str, int]], value: int, label: str, elem_id: str,
              info: str | None = None) -> gr.Dropdown:
    """A class list that filters as you type (unknown text is not accepted as a value)."""
    return gr.Dropdown(choices, value=value, label=label, elem_id=elem_id, filterable=True,
                       allow_custom_value=False, info=info, elem_classes=["hmar-class-list"])


def _generate_tab(names: list[str]) -> dict[str, Any]:
    with gr.Tab("Generate", id="generate"):
        gen_class = _dropdown(class_choices(names, RANDOM_CLASS), NO_CLASS, "Class",
                              "generate-class", info="Type to filter the list")
        generate_btn = gr.Button("Generate", variant="primary", elem_id="generate-button")
    return {"gen_class": gen_class, "generate_btn": generate_btn}


def _edit_mode_tabs(names: list[str], scales: int, strength_info: str,
                    class_strength: int) -> dict[str, Any]:
    """Inpaint / Outpaint / Class edit, each with its own controls and button."""
    with gr.Tabs(elem_id="edit-modes") as edit_modes:
        with gr.Tab("Inpaint", id="inpaint"):
            inpaint_class = _dropdown(class_choices(names, "none (match the surroundings)"),
                                      NO_CLASS, "Guide with class", "inpaint-class")
            inpaint_strength = RangeSlider(
                0, scales - 1, value=0, step=1, label="Keep coarse layout",
                info="Scales copied from the original inside the mask (0 = repaint freely)")
            inpaint_btn = gr.Button("Inpaint", variant="primary", elem_id="inpaint-button")
        with gr.Tab("Outpaint", id="outpaint"):
            out_sides = gr.CheckboxGroup(["Left", "Right", "Top", "Bottom"], value=["Right"],
                                         label="Extend towards", elem_id="outpaint-sides")
            out_extent = RangeSlider(*EXTENT_RANGE, value=25, step=5,
                                     label="Extent (% of the image side)",
                                     elem_id="outpaint-extent")
            out_class = _dropdown(class_choices(names, "none (match the picture)"), NO_CLASS,
                                  "Guide with class", "outpaint-class")
            outpaint_btn = gr.Button("Outpaint", variant="primary", elem_id="outpaint-button")
        with gr.Tab("Class edit", id="class-edit"):
            gr.Markdown("Restyle the picture (or only the painted area) as another class.")
            edit_class = _dropdown(class_choices(names), 0, "Target class", "edit-class")
            edit_strength = RangeSlider(
                0, scales - 1, value=min(class_strength, scales - 1), step=1,
                label="Strength: scales kept", info=strength_info, elem_id="edit-strength")
            class_edit_btn = gr.Button("Restyle", variant="primary",
                                       elem_id="class-edit-button")
    return {"edit_modes": edit_modes, "inpaint_class": inpaint_class,
            "inpaint_strength": inpaint_strength, "inpaint_btn": inpaint_btn,
            "out_sides": out_sides, "out_extent": out_extent, "out_class": out_class,
            "outpaint_btn": outpaint_btn, "edit_class": edit_class,
            "edit_strength": edit_strength, "class_edit_btn": class_edit_btn}


def _mask_options() -> dict[str, Any]:
    with gr.Accordion("Mask options", open=False, elem_id="mask-options"):
        area = gr.Radio([label for label, _ in handlers.AREAS], value=handlers.AREAS[0][0],
                        type="index", label="Area to change", elem_id="mask-area",
                        info="Invert the painted mask, or change the whole picture")
        grow = RangeSlider(*GROW_RANGE, value=1, step=1, label="Grow mask (tokens)",
                           info="Widen the painted area by whole tokens")
        feather = RangeSlider(*FEATHER_RANGE, value=8, step=1, label="Feather (pixels)",
                              info="Soft blend of the new pixels into the old")
        only_masked = gr.Checkbox(False, label="Only masked area",
                                  info="Work on a crop around the mask (finer detail on big "
                                       "pictures)")
        padding = RangeSlider(*PADDING_RANGE, value=32, step=4, label="Crop padding (pixels)")
    return {"area": area, "grow": grow, "feather": feather, "only_masked": only_masked,
            "padding": padding}


def _edit_tab(names: list[str], scales: int, size: int, strength_info: str,
              class_strength: int) -> dict[str, Any]:
    with gr.Tab("Edit", id="edit"):
        gr.HTML(f'<div id="{ALERT_ID}" role="alert"></div>', padding=False)
        editor = PictureEditor(
            label=f"Picture (any size; the model works at {size}×{size} px windows). "
                  "Paint the area to change with the Brush; Undo (Ctrl+Z), Redo "
                  "(Ctrl+Shift+Z or Ctrl+Y) and Erase fix mistakes",
            type="numpy", image_mode="RGBA", format="png",
            sources=("upload", "clipboard"), transforms=("crop",),
            brush=handlers.brush(DEFAULT_BRUSH_SIZE), eraser=gr.Eraser(default_size="auto"),
            layers=False, canvas_size=(512, 512), height=420, interactive=True,
            elem_id=EDITOR_ID,
        )
        brush_size = RangeSlider(*BRUSH_SIZE_RANGE, value=DEFAULT_BRUSH_SIZE, step=2,
                                 label="Brush size (px of the picture)", elem_id="brush-size",
                                 info="Width of the next strokes")
        tabs = _edit_mode_tabs(names, scales, strength_info, class_strength)
        masks = _mask_options()
    return {"editor": editor, "brush_size": brush_size, **tabs, **masks}


def _sampling_panel(pipeline: Pipeline, timing: Timing | None) -> dict[str, Any]:
    max_steps = max_quality_steps(pipeline.patch_nums, pipeline.has_mask_branch,
                             pipeline.sampler_config.refine_max_side)
    default_steps = min(pipeline.sampler_config.steps or min(3, max_steps), max_steps)
    with gr.Column(variant="panel"):
        quality = RangeSlider(0, max(max_steps, 1), value=default_steps, step=1,
                              label="Speed ⟷ Quality", interactive=max_steps > 0,
                              info="Masked refinement steps per coarse scale (0 = fastest)",
                              elem_id="quality")
        quality_text = gr.Markdown(
            handlers.quality_label(pipeline, default_steps, DEFAULT_VARIANTS, timing),
            elem_id="quality-time")
        with gr.Row():
            seed = gr.Textbox("42", label="Seed", info="Same seed + settings = same picture "
                              "(0 … 9223372036854775807)", elem_id="seed", scale=4,
                              max_lines=1)
            dice = gr.Button("Random seed", scale=1, min_width=90, elem_id="seed-dice")
            variants = RangeSlider(1, MAX_VARIANTS, value=DEFAULT_VARIANTS, step=1,
                                   label="Variants", scale=4, elem_id="variants")
    with gr.Accordion("Advanced", open=False):
        cfg = RangeSlider(*CFG_RANGE, value=float(pipeline.sampler_config.cfg), step=0.1,
                          label="CFG (class guidance)", elem_id="cfg")
        top_k = RangeSlider(*TOP_K_RANGE, value=int(pipeline.sampler_config.top_k), step=1,
                            label="Top-k (0 = off)", elem_id="top-k")
        top_p = RangeSlider(0, 1, value=float(pipeline.sampler_config.top_p), step=0.01,
                            label="Top-p (0 = off)", elem_id="top-p")
    return {"quality": quality, "quality_text": quality_text, "seed": seed, "dice": dice,
            "variants": variants, "cfg": cfg, "top_k": top_k, "top_p": top_p}


def _output_column(size: int) -> Outputs:
    # Image outputs are PNG paths (app.outputs), never PIL: Gradio rewrites the cached file of
    # a PIL output in place, breaking other users' downloads.
    with gr.Row():
        status = gr.Markdown("Ready.", label="Status", elem_id="status")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-button", scale=0,
                             min_width=90)
    gallery = gr.Gallery(label=f"Results ({size}×{size} px, shown with crisp pixels)",
                         format="png", columns=4, height="auto", object_fit="contain",
                         elem_id="results",
                         buttons=["download", "download_all", "fullscreen"])
    with gr.Row():
        to_editor_btn = gr.Button("Edit this result", elem_id="to-editor", scale=1)
        heatmap = gr.Checkbox(False, label="Confidence heatmap (yellow = sure, blue = unsure)",
                              elem_id="heatmap", scale=2)
    preview = gr.Image(label="Live preview (sharpens scale by scale)", type="filepath",
                       format="png", interactive=False, height=240, elem_id="preview")
    downloads = gr.File(label="Download PNG", file_count="multiple", interactive=False,
                        elem_id="downloads")
    compare = gr.ImageSlider(label="Before / after (edits: drag the handle)", type="filepath",
                             interactive=False, elem_id="compare", height=300)
    history = gr.Gallery(label="Earlier results (this session, newest first)", format="png",
                         columns=8, height=220, object_fit="contain", elem_id="history")
    return Outputs(status, stop_btn, gallery, to_editor_btn, heatmap, preview, downloads,
                   compare, history)


def build_demo(
    pipeline: Pipeline,
    *,
    warning: str | None = None,
    timing: Timing | None = None,
    title: str = "HMAR Studio",
) -> gr.Blocks:
    """Build the app around a loaded pipeline.

    Args:
        pipeline: the model (any device); it is only read, never modified.
        warning: shown as a banner at the top (e.g. "demo model not bundled").
        timing: measured costs for the expected-time label (:func:`app.calibrate`).
        title: the browser tab title.

    Returns:
        The ``gr.Blocks`` with its queue configured (bounded); call ``launch()`` on it.
    """
    from .wiring import wire_events

    names, scales = list(pipeline.class_names), len(pipeline.patch_nums)
    with gr.Blocks(title=title, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(_INTRO)
        if warning:
            gr.Markdown(f"**WARNING:** {warning}", elem_id="demo-warning")
        states = {
            "result": gr.State(None),  # the last RunResult of this user
            "selected": gr.State(None),  # the gallery item this user clicked (None: none)
            "session": gr.State(VariantSessions()),  # this user's edit caches (one per variant)
            "run": gr.State(UserRun()),  # this user's Stop flag and "running" mark
            "history": gr.State([]),  # this user's earlier results (newest first)
        }
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                with gr.Tabs(elem_id="modes") as modes:
                    generate = _generate_tab(names)
                    edit = _edit_tab(names, scales, pipeline.image_size, class_strength_info(
                        pipeline.patch_nums, pipeline.has_mask_branch,
                        pipeline.sampler_config.refine_max_side, revise=True),
                        pipeline.class_edit_defaults().strength)
                sampling = _sampling_panel(pipeline, timing)
            with gr.Column(scale=5):
                outputs = _output_column(pipeline.image_size)
        controls = Controls(modes=modes, **generate, **edit, **sampling)
        wire_events(pipeline, timing, controls, outputs, states)
        demo.load(None, None, None, js=page_script(_parse_file_size(MAX_FILE_SIZE) or 0,
                                                   handlers.MAX_PIXELS))
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=4)
    return demo
