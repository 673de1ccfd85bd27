"""The Gradio layout: ``build_demo(pipeline) -> gr.Blocks``.

One editor for every mode (Generate, Inpaint, Outpaint, Class edit), shared sampling controls,
and outputs that stream a preview per scale, then a gallery, PNG downloads and an optional
confidence heatmap. Only wiring lives here; the logic is in :mod:`app.handlers`. The pipeline is
injected (loaded once by ``launch.py``); this module never launches anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

import gradio as gr

from hmar_core import Pipeline
from hmar_core.editing import EditSession, default_class_strength

from . import handlers
from .editor_component import BoundedImageEditor
from .params import MAX_VARIANTS, NO_CLASS, Timing, class_choices, max_quality_steps
from .streaming import StopSignal

__all__ = ["MAX_FILE_SIZE", "QUEUE_SIZE", "build_demo"]

logger = logging.getLogger(__name__)

#: Upload limit passed to ``launch(max_file_size=...)``.
MAX_FILE_SIZE = "20mb"
#: Runs that may wait in the queue before new ones are turned away.
QUEUE_SIZE = 16
#: Images per run when the page opens.
DEFAULT_VARIANTS = 2
#: All model work shares this concurrency id (limit 1): one run at a time on the model.
MODEL_CONCURRENCY = "model"

_INTRO = (
    "# HMAR Studio\n"
    "Next-scale image generation and training-free editing. Pick a mode, press its button, "
    "and watch the picture sharpen scale by scale."
)


def _model_event(**kwargs: Any) -> dict[str, Any]:
    """Keyword arguments shared by every event that runs the model."""
    return {"concurrency_limit": 1, "concurrency_id": MODEL_CONCURRENCY,
            "show_progress": "full", **kwargs}


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
    max_steps = max_quality_steps(pipeline.patch_nums, pipeline.has_mask_branch)
    default_steps = min(pipeline.sampler_config.steps or min(3, max_steps), max_steps)
    scales = len(pipeline.patch_nums)
    names = pipeline.class_names
    size = pipeline.image_size

    with gr.Blocks(title=title, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(_INTRO)
        if warning:
            gr.Markdown(f"⚠️ **WARNING:** {warning}", elem_id="demo-warning")
        result_state = gr.State(None)  # the last RunResult of this user
        selected_state = gr.State(0)  # the gallery item this user clicked
        session_state = gr.State(EditSession())  # this user's edit cache (deep-copied per user)
        stop_state = gr.State(StopSignal())  # this user's Stop flag (a fresh one per user)

        with gr.Row(equal_height=False):
            # ------------------------------------------------------------------ inputs
            with gr.Column(scale=5):
                editor = BoundedImageEditor(  # gr.ImageEditor, server side bounded
                    label=f"Image (upload any picture; it is fitted to {size}×{size}), "
                          "then paint the area to change",
                    type="numpy", image_mode="RGBA", format="png",
                    sources=("upload", "clipboard"), transforms=("crop",),
                    brush=gr.Brush(default_size="auto", colors=["#ff2e88"],
                                   color_mode="fixed"),
                    eraser=gr.Eraser(default_size="auto"), layers=False,
                    canvas_size=(512, 512), height=420, interactive=True, elem_id="editor",
                )
                with gr.Tabs(elem_id="modes"):
                    with gr.Tab("Generate", id="generate"):
                        gen_class = gr.Dropdown(
                            class_choices(names, "🎲 random class"), value=NO_CLASS,
                            label="Class", elem_id="generate-class")
                        generate_btn = gr.Button("Generate", variant="primary",
                                                 elem_id="generate-button")
                    with gr.Tab("Inpaint", id="inpaint"):
                        gr.Markdown("Paint over what should change with the **Brush**; the "
                                    "**Erase** and **Undo** tools fix mistakes.")
                        inpaint_class = gr.Dropdown(
                            class_choices(names, "none (match the surroundings)"),
                            value=NO_CLASS, label="Guide with class", elem_id="inpaint-class")
                        inpaint_strength = gr.Slider(
                            0, scales - 1, value=0, step=1, label="Keep coarse layout",
                            info="Scales copied from the original inside the mask "
                                 "(0 = repaint freely)")
                        inpaint_btn = gr.Button("Inpaint", variant="primary",
                                                elem_id="inpaint-button")
                    with gr.Tab("Outpaint", id="outpaint"):
                        out_sides = gr.CheckboxGroup(
                            ["Left", "Right", "Top", "Bottom"], value=["Right"],
                            label="Extend towards", elem_id="outpaint-sides")
                        out_extent = gr.Slider(5, 100, value=25, step=5,
                                               label="Extent (% of the image side)")
                        out_class = gr.Dropdown(
                            class_choices(names, "none (match the picture)"),
                            value=NO_CLASS, label="Guide with class")
                        outpaint_btn = gr.Button("Outpaint", variant="primary",
                                                 elem_id="outpaint-button")
                    with gr.Tab("Class edit", id="class-edit"):
                        gr.Markdown("Restyle the picture (or only the painted area) as "
                                    "another class.")
                        edit_class = gr.Dropdown(class_choices(names), value=0,
                                                 label="Target class", elem_id="edit-class")
                        edit_strength = gr.Slider(
                            0, scales - 1, value=min(default_class_strength(scales), scales - 1),
                            step=1,
                            label="Strength: scales kept",
                            info="Coarse scales copied from the original: more = closer to it")
                        class_edit_btn = gr.Button("Restyle", variant="primary",
                                                   elem_id="class-edit-button")

                with gr.Column(variant="panel"):
                    quality = gr.Slider(
                        0, max(max_steps, 1), value=default_steps, step=1,
                        label="Speed ⟷ Quality", interactive=max_steps > 0,
                        info="Masked refinement steps per coarse scale (0 = fastest)",
                        elem_id="quality")
                    quality_text = gr.Markdown(
                        handlers.quality_label(pipeline, default_steps, DEFAULT_VARIANTS,
                                               timing),
                        elem_id="quality-time")
                    with gr.Row():
                        seed = gr.Number(42, precision=0, minimum=0, label="Seed",
                                         info="Same seed + settings = same picture",
                                         elem_id="seed", scale=4)
                        dice = gr.Button("🎲 Random", scale=1, min_width=90,
                                         elem_id="seed-dice")
                        variants = gr.Slider(1, MAX_VARIANTS, value=DEFAULT_VARIANTS, step=1,
                                             label="Variants", scale=4)
                with gr.Accordion("Mask options", open=False):
                    grow = gr.Slider(0, 4, value=1, step=1, label="Grow mask (tokens)",
                                     info="Widen the painted area by whole tokens")
                    feather = gr.Slider(0, 32, value=8, step=1, label="Feather (pixels)",
                                        info="Soft blend of the new pixels into the old")
                    only_masked = gr.Checkbox(
                        False, label="Only masked area",
                        info="Work on a crop around the mask (finer detail on big pictures)")
                    padding = gr.Slider(0, 256, value=32, step=4, label="Crop padding (pixels)")
                with gr.Accordion("Advanced", open=False):
                    cfg = gr.Slider(0, 10, value=float(pipeline.sampler_config.cfg), step=0.1,
                                    label="CFG (class guidance)")
                    top_k = gr.Slider(0, 4096, value=int(pipeline.sampler_config.top_k), step=1,
                                      label="Top-k (0 = off)")
                    top_p = gr.Slider(0, 1, value=float(pipeline.sampler_config.top_p),
                                      step=0.01, label="Top-p (0 = off)")

            # ----------------------------------------------------------------- outputs
            with gr.Column(scale=5):
                # Image outputs are PNG paths (app.outputs), never PIL: Gradio rewrites the
                # cached file of a PIL output in place, breaking other users' downloads.
                preview = gr.Image(label="Live preview (sharpens scale by scale)",
                                   type="filepath", format="png", interactive=False, height=280,
                                   elem_id="preview")
                status = gr.Markdown("Ready.", label="Status", elem_id="status")
                stop_btn = gr.Button("⏹ Stop", variant="stop", elem_id="stop-button")
                gallery = gr.Gallery(label="Results", format="png", columns=4, height="auto",
                                     object_fit="contain", elem_id="results",
                                     buttons=["download", "download_all", "fullscreen"])
                heatmap = gr.Checkbox(False, label="Overlay token-confidence heatmap "
                                                   "(yellow = sure, blue = unsure)",
                                      elem_id="heatmap")
                downloads = gr.File(label="Download PNG", file_count="multiple",
                                    interactive=False, elem_id="downloads")
                to_editor_btn = gr.Button("✏️ Edit this result", elem_id="to-editor")

        # ---------------------------------------------------------------------- events
        # Gradio names API parameters after the handler's parameters, so the closures below
        # spell them out; each forwards to a handler in app.handlers.
        sampling = [quality, cfg, top_k, top_p, seed, variants, heatmap]
        masking = [grow, feather, only_masked, padding]
        outputs = [preview, gallery, downloads, status, result_state]

        def generate(stop: StopSignal, class_id: Any, quality: float, cfg: float,
                     top_k: float, top_p: float, seed: Any, variants: float, heatmap: bool,
                     progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio API)
                     ) -> Iterator[handlers.RunOutputs]:
            """Generate images of one class (streams each scale)."""
            yield from handlers.generate_events(pipeline, class_id, quality, cfg, top_k, top_p,
                                                seed, variants, heatmap, progress, stop)

        def inpaint(stop: StopSignal, session: EditSession, image: Any, class_id: Any,
                    strength: float, quality: float, cfg: float, top_k: float, top_p: float,
                    seed: Any, variants: float, heatmap: bool, grow: float, feather: float,
                    only_masked: bool, padding: float,
                    progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio API)
                    ) -> Iterator[handlers.RunOutputs]:
            """Regenerate the painted area of the picture (streams each scale)."""
            yield from handlers.inpaint_events(
                pipeline, session, image, class_id, strength,
                handlers.EditControls(quality, cfg, top_k, top_p, seed, variants, grow,
                                      feather, only_masked, padding, heatmap), progress, stop)

        def outpaint(stop: StopSignal, image: Any, sides: list[str], extent: float,
                     class_id: Any, quality: float, cfg: float, top_k: float, top_p: float,
                     seed: Any, variants: float, heatmap: bool, grow: float, feather: float,
                     only_masked: bool, padding: float,
                     progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio API)
                     ) -> Iterator[handlers.RunOutputs]:
            """Extend the picture towards the chosen sides (streams each scale)."""
            yield from handlers.outpaint_events(
                pipeline, image, sides, extent, class_id,
                handlers.EditControls(quality, cfg, top_k, top_p, seed, variants, grow,
                                      feather, only_masked, padding, heatmap), progress, stop)

        def class_edit(stop: StopSignal, session: EditSession, image: Any, class_id: Any,
                       strength: float, quality: float, cfg: float, top_k: float,
                       top_p: float, seed: Any, variants: float, heatmap: bool, grow: float,
                       feather: float, only_masked: bool, padding: float,
                       progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio API)
                       ) -> Iterator[handlers.RunOutputs]:
            """Restyle the picture (or the painted area) as the target class."""
            yield from handlers.class_edit_events(
                pipeline, session, image, class_id, strength,
                handlers.EditControls(quality, cfg, top_k, top_p, seed, variants, grow,
                                      feather, only_masked, padding, heatmap), progress, stop)

        per_user = [stop_state, session_state]
        run_events: list[Any] = [
            generate_btn.click(generate, [stop_state, gen_class, *sampling], outputs,
                               api_name="generate", **_model_event()),
            inpaint_btn.click(inpaint, [*per_user, editor, inpaint_class, inpaint_strength,
                                        *sampling, *masking], outputs,
                              api_name="inpaint", **_model_event()),
            outpaint_btn.click(outpaint, [stop_state, editor, out_sides, out_extent, out_class,
                                          *sampling, *masking], outputs,
                               api_name="outpaint", **_model_event()),
            class_edit_btn.click(class_edit, [*per_user, editor, edit_class, edit_strength,
                                              *sampling, *masking], outputs,
                                 api_name="class_edit", **_model_event()),
        ]
        stop_btn.click(handlers.request_stop, stop_state, status, cancels=run_events,
                       api_visibility="private", show_progress="hidden")
        dice.click(handlers.randomize_seed, None, seed, api_name="random_seed",
                   show_progress="hidden")
        label_fn = partial(handlers.quality_label, pipeline, timing=timing)
        for control in (quality, variants):
            control.change(lambda steps, count: label_fn(steps, count), [quality, variants],
                           quality_text, show_progress="hidden", api_visibility="private")
        heatmap.change(handlers.toggle_heatmap, [result_state, heatmap], gallery,
                       show_progress="hidden", api_visibility="private")
        gallery.select(handlers.remember_selection, None, selected_state,
                       api_visibility="private")
        to_editor_btn.click(handlers.edit_result, [result_state, selected_state], editor,
                            api_visibility="private")

    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=4)
    return demo
