"""Connect the components of :mod:`app.ui` to the handlers of :mod:`app.handlers`.

Gradio names API parameters after the handler's parameters, so the closures below spell them
out (``/generate``, ``/inpaint``, ``/outpaint``, ``/class_edit``, ``/random_seed``); each
forwards to a handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import gradio as gr

from hmar_core import Pipeline
from hmar_core.variants import VariantSessions

from . import handlers
from .params import Timing
from .runs import UserRun

__all__ = ["MODEL_CONCURRENCY", "wire_events"]

#: All model work shares this concurrency id (limit 1): one run at a time on the model.
MODEL_CONCURRENCY = "model"


def _model_event(**kwargs: Any) -> dict[str, Any]:
    """Keyword arguments shared by every event that runs the model."""
    return {"concurrency_limit": 1, "concurrency_id": MODEL_CONCURRENCY,
            "show_progress": "full", **kwargs}


def _area(index: Any) -> str:
    """The "Area to change" radio (``type="index"``) as a value of ``handlers.AREAS``."""
    try:
        return handlers.AREAS[int(index)][1]
    except (TypeError, ValueError, IndexError):
        return "painted"


def _run_handlers(pipeline: Pipeline, timing: Timing | None) -> dict[str, Any]:
    """The model handlers with their API parameter names."""

    def generate(run: UserRun, class_id: Any, quality: float, cfg: float, top_k: float,
                 top_p: float, seed: Any, variants: float, heatmap: bool,
                 progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio API)
                 ) -> Iterator[handlers.RunOutputs]:
        """Generate images of one class (streams each scale)."""
        yield from handlers.generate_events(pipeline, class_id, quality, cfg, top_k, top_p,
                                            seed, variants, heatmap, progress, run, timing)

    def masked(mode: str, doc: str) -> Callable[..., Iterator[handlers.RunOutputs]]:
        """Inpaint and class edit share their parameters (the API's names) and steps."""

        def run_mode(run: UserRun, session: VariantSessions, image: Any, class_id: Any,
                     strength: float, quality: float, cfg: float, top_k: float, top_p: float,
                     seed: Any, variants: float, heatmap: bool, area: Any, grow: float,
                     feather: float, only_masked: bool, padding: float,
                     progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio API)
                     ) -> Iterator[handlers.RunOutputs]:
            controls = handlers.EditControls(quality, cfg, top_k, top_p, seed, variants, grow,
                                             feather, only_masked, padding, heatmap,
                                             _area(area))
            yield from handlers.masked_edit_events(mode, pipeline, session, image, class_id,
                                                   strength, controls, progress, run, timing)

        run_mode.__doc__ = doc
        return run_mode

    def outpaint(run: UserRun, image: Any, sides: list[str], extent: float, class_id: Any,
                 quality: float, cfg: float, top_k: float, top_p: float, seed: Any,
                 variants: float, heatmap: bool, area: Any, grow: float, feather: float,
                 only_masked: bool, padding: float,
                 progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio API)
                 ) -> Iterator[handlers.RunOutputs]:
        """Extend the picture towards the chosen sides (streams each scale)."""
        controls = handlers.EditControls(quality, cfg, top_k, top_p, seed, variants, grow,
                                         feather, only_masked, padding, heatmap)
        yield from handlers.outpaint_events(pipeline, image, sides, extent, class_id,
                                            controls, progress, run, timing)

    return {"generate": generate, "outpaint": outpaint,
            "inpaint": masked("inpaint", "Regenerate the painted area of the picture (streams "
                              "each scale)."),
            "class_edit": masked("class edit", "Restyle the picture (or the painted area) as "
                                 "the target class.")}


def wire_events(pipeline: Pipeline, timing: Timing | None, c: Any, o: Any,
                states: dict[str, Any]) -> None:
    """Connect every event. ``c``/``o``: :class:`app.ui.Controls` / :class:`app.ui.Outputs`;
    ``states``: the per-user ``gr.State``s (result, selected, session, run)."""
    run, session = states["run"], states["session"]
    sampling = [c.quality, c.cfg, c.top_k, c.top_p, c.seed, c.variants, o.heatmap]
    masking = [c.area, c.grow, c.feather, c.only_masked, c.padding]
    outputs = [o.preview, o.gallery, o.downloads, o.status, states["result"],
               states["selected"]]
    fns = _run_handlers(pipeline, timing)
    run_events: list[Any] = [
        c.generate_btn.click(fns["generate"], [run, c.gen_class, *sampling], outputs,
                             api_name="generate", **_model_event()),
        c.inpaint_btn.click(fns["inpaint"], [run, session, c.editor, c.inpaint_class,
                                             c.inpaint_strength, *sampling, *masking],
                            outputs, api_name="inpaint", **_model_event()),
        c.outpaint_btn.click(fns["outpaint"], [run, c.editor, c.out_sides, c.out_extent,
                                               c.out_class, *sampling, *masking], outputs,
                             api_name="outpaint", **_model_event()),
        c.class_edit_btn.click(fns["class_edit"], [run, session, c.editor, c.edit_class,
                                                   c.edit_strength, *sampling, *masking],
                               outputs, api_name="class_edit", **_model_event()),
    ]
    for event in run_events:
        event.then(handlers.after_run, [states["result"], states["selected"], states["history"]],
                   [o.gallery, o.compare, o.history, states["history"]],
                   api_visibility="private", show_progress="hidden")
    o.stop_btn.click(handlers.request_stop, run, o.status, cancels=run_events,
                     api_visibility="private", show_progress="hidden")
    c.dice.click(handlers.randomize_seed, None, c.seed, api_name="random_seed",
                 show_progress="hidden")
    label_fn = partial(handlers.quality_label, pipeline, timing=timing)
    for control in (c.quality, c.variants):
        control.change(lambda steps, count: label_fn(steps, count), [c.quality, c.variants],
                       c.quality_text, show_progress="hidden", api_visibility="private")
    o.heatmap.change(handlers.toggle_heatmap, [states["result"], o.heatmap], o.gallery,
                     show_progress="hidden", api_visibility="private")
    o.gallery.select(handlers.remember_selection, None, states["selected"],
                     api_visibility="private")
    c.brush_size.change(handlers.brush_size_update, c.brush_size, c.editor,
                        show_progress="hidden", api_visibility="private")
    o.to_editor_btn.click(handlers.edit_result, [states["result"], states["selected"]],
                          [c.editor, o.status, c.modes], api_visibility="private",
                          show_progress="hidden")
