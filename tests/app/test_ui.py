"""The Blocks wiring: queue bounds, shared model concurrency, Stop, API names, PNG formats."""

from __future__ import annotations

import gradio as gr

import app


def test_model_events_share_one_limited_queue(app_pipe):
    demo = app.build_demo(app_pipe)
    assert demo._queue.max_size == app.QUEUE_SIZE
    model = {fn.api_name: fn for fn in demo.fns.values() if fn.concurrency_id == "model"}
    assert set(model) == {"generate", "inpaint", "outpaint", "class_edit"}
    assert all(fn.concurrency_limit == 1 for fn in model.values())
    stop = [fn for fn in demo.fns.values() if fn.cancels]
    assert len(stop) == 1
    assert {demo.fns[i].api_name for i in stop[0].cancels} == set(model)


def test_images_are_png_and_editor_keeps_alpha(app_pipe):
    demo = app.build_demo(app_pipe)
    blocks = demo.blocks.values()
    editor = next(b for b in blocks if isinstance(b, gr.ImageEditor))
    assert editor.image_mode == "RGBA" and editor.format == "png" and editor.interactive
    images = [b for b in blocks if isinstance(b, gr.Image | gr.Gallery)]
    assert images and all(b.format == "png" for b in images)


def test_warning_banner_and_class_names(app_pipe):
    demo = app.build_demo(app_pipe, warning="the demo model is not bundled yet")
    texts = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown)]
    assert any("WARNING" in t and "not bundled" in t for t in texts)
    dropdowns = [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown)]
    labels = {label for d in dropdowns for label, _ in d.choices}
    assert f"{app_pipe.class_names[3]} (3)" in labels


def test_the_class_edit_strength_help_says_what_the_app_s_class_edit_does():
    """The app's class edits revise the kept scales (``EditOptions.revise``), so the help
    says so, and does not claim that the quality slider has nothing to refine there."""
    from hmar_core import Pipeline, SamplerConfig

    narrow = Pipeline.random(sampler_cfg=SamplerConfig(steps=1, refine_max_side=3))
    demo = app.build_demo(narrow)
    strength = next(b for b in demo.blocks.values()
                    if getattr(b, "elem_id", None) == "edit-strength")
    assert "except the parts the new class disagrees with" in strength.info
    assert "changes nothing" not in strength.info


def test_the_class_edit_strength_slider_starts_at_the_model_s_default():
    """A model's own ``class_strength`` (the bundled one: 1) is where the slider starts;
    without one, the library's default."""
    from hmar_core import Pipeline, SamplerConfig
    from hmar_core.editing import default_class_strength

    def start(pipe: Pipeline) -> int:
        demo = app.build_demo(pipe)
        return next(b for b in demo.blocks.values()
                    if getattr(b, "elem_id", None) == "edit-strength").value

    plain = Pipeline.random()
    assert start(plain) == default_class_strength(len(plain.patch_nums))
    own = Pipeline.random(sampler_cfg=SamplerConfig(class_strength=1, class_revise=-1.0))
    assert start(own) == 1 != default_class_strength(len(own.patch_nums))
