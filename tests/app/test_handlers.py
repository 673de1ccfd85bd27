"""Handler tests: the app's pure functions, called directly (no server)."""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from app import InputError, friendly_message, handlers
from app.editor import background_image, editor_value, mask_from_layers, mask_image
from app.handlers import (
    edit_result,
    gallery_items,
    generate_events,
    quality_label,
    randomize_seed,
    stream_outputs,
    toggle_heatmap,
)
from app.imaging import (
    ConfidenceTile,
    confidence_map,
    confidence_overlay,
    heatmap_colors,
    preview_strip,
    to_pil_images,
)
from app.outputs import OutputFolder
from app.params import (
    MAX_SEED,
    NO_CLASS,
    SamplingParams,
    Timing,
    class_choices,
    class_id_from_choice,
    expected_time_label,
    max_quality_steps,
    outpaint_extents,
    parse_seed,
    refinement_passes,
    sampling_params,
)
from app.runs import RunResult, run_generate
from app.streaming import Finished, Reported, RunCancelledError, stream_work
from hmar_core import Pipeline, SamplerConfig

PYRAMID_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def rgba(height: int, width: int, painted: tuple[slice, slice] | None = None,
         alpha: int = 255) -> np.ndarray:
    layer = np.zeros((height, width, 4), np.uint8)
    if painted is not None:
        layer[painted] = (255, 46, 136, alpha)
    return layer


# --------------------------------------------------------------------------- mask extraction
def test_mask_is_alpha_of_one_layer():
    layer = rgba(8, 10, (slice(2, 4), slice(3, 7)))
    mask = mask_from_layers([layer])
    assert mask.shape == (8, 10) and mask.dtype == bool
    assert mask.sum() == 2 * 4 and mask[2:4, 3:7].all()


def test_mask_is_union_of_several_layers_and_ignores_colour():
    first = rgba(6, 6, (slice(0, 2), slice(0, 2)))
    second = rgba(6, 6, (slice(4, 6), slice(4, 6)), alpha=1)  # faint stroke still counts
    second[0, 5] = (0, 0, 0, 0)  # colour without alpha is not painted
    mask = mask_from_layers([first, second])
    assert mask.sum() == 8 and mask[0, 0] and mask[5, 5] and not mask[0, 5]


def test_empty_and_missing_layers():
    assert mask_from_layers([]) is None
    assert mask_from_layers(None) is None
    empty = mask_from_layers([rgba(5, 5), rgba(5, 5)])
    assert empty is not None and not empty.any()
    assert mask_from_layers([None, rgba(3, 3, (slice(0, 1), slice(0, 1)))]).sum() == 1


def test_layer_of_other_size_is_resized_to_the_background():
    layer = rgba(4, 4, (slice(0, 2), slice(0, 2)))  # top-left quarter
    mask = mask_from_layers([layer], size=(8, 8))
    assert mask.shape == (8, 8) and mask[:4, :4].all() and mask.sum() == 16


def test_rgb_and_pil_layers():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 1] = 200
    assert mask_from_layers([rgb]).sum() == 1
    pil = Image.fromarray(rgba(4, 4, (slice(0, 1), slice(None))))
    assert mask_from_layers([pil]).sum() == 4


def test_editor_value_background_and_mask():
    background = np.full((8, 8, 4), 255, np.uint8)
    value = {"background": background, "layers": [rgba(8, 8, (slice(1, 3), slice(1, 3)))],
             "composite": background}
    image, mask = editor_value(value)
    assert image.size == (8, 8) and image.mode == "L"  # opaque and grey: greyscale
    assert mask.sum() == 4
    assert mask_image(mask).getextrema() == (0, 255)


def test_editor_value_keeps_the_upload_s_mode():
    colour = np.zeros((4, 4, 4), np.uint8)
    colour[..., 0], colour[..., 3] = 200, 255
    assert background_image({"background": colour}).mode == "RGB"  # opaque: RGB
    colour[0, 0, 3] = 0
    assert background_image({"background": colour}).mode == "RGBA"  # transparency kept
    grey = np.full((4, 4, 4), 90, np.uint8)
    grey[..., 3] = 255
    assert background_image({"background": grey}).mode == "L"
    grey[0, 0, 3] = 10
    assert background_image({"background": grey}).mode == "LA"


def test_editor_value_without_paint_or_image():
    background = np.full((8, 8, 3), 128, np.uint8)
    image, mask = editor_value({"background": background, "layers": [rgba(8, 8)],
                                "composite": None})
    assert image.mode == "L" and mask is None  # a grey picture
    assert editor_value(None) == (None, None)
    assert editor_value({"background": None, "layers": [], "composite": None}) == (None, None)
    transparent = rgba(8, 8)
    assert background_image({"background": transparent, "layers": [],
                             "composite": transparent}) is None


# -------------------------------------------------------------------------- parameter mapping
def test_quality_slider_range_follows_the_pyramid():
    assert max_quality_steps((1, 2, 3, 4)) == 3  # only the 2×2 scale is refined: 3 tokens
    assert max_quality_steps(PYRAMID_256) == 12  # capped
    assert max_quality_steps(PYRAMID_256, has_mask_branch=False) == 0
    passes = [refinement_passes(PYRAMID_256, s) for s in range(6)]
    assert passes[0] == 0 and passes == sorted(passes) and len(set(passes)) == 6
    # a model that refines only up to 3x3 (refine_max_side): 2x2 re-predicts 3 tokens and 3x3
    # six: two passes a step while both refine, one once 2x2 is done; the slider ends at 6
    assert max_quality_steps(PYRAMID_256, max_side=3) == 6
    assert [refinement_passes(PYRAMID_256, s, 3) for s in range(8)] == [0, 2, 4, 6, 7, 8, 9, 9]


def test_the_slider_follows_the_models_refine_max_side():
    narrow = Pipeline.random(sampler_cfg=SamplerConfig(steps=1, refine_max_side=3))
    wide = Pipeline.random(sampler_cfg=SamplerConfig(steps=1))  # tiny pyramid (1, 2, 3, 4)
    assert narrow.resolve_schedule()[2] != (9,) and wide.resolve_schedule()[2] == (9,)
    assert handlers._max_steps(narrow) == 6 and handlers._max_steps(wide) == 3
    timing = Timing(base_seconds=0.5, seconds_per_pass=0.1)
    assert "≈ 0.7 s" in handlers.quality_label(narrow, 1, 1, timing)  # 2 extra passes
    assert "≈ 0.6 s" in handlers.quality_label(wide, 1, 1, timing)  # 1 extra pass


def test_class_strength_info_says_from_where_the_quality_slider_has_nothing_to_do():
    from app.params import class_strength_info

    narrow = class_strength_info(PYRAMID_256, max_side=3)
    assert "From 3 on" in narrow and "up to 3×3" in narrow
    tiny = class_strength_info((1, 2, 3, 4))  # the default rule refines only 2×2 here
    assert "From 2 on" in tiny and "up to 2×2" in tiny
    plain = class_strength_info(PYRAMID_256, has_mask_branch=False)
    assert plain == "Coarse scales copied from the original: more = closer to it"


def test_what_the_strength_help_says_is_what_a_class_edit_does():
    from app.params import class_strength_info
    from hmar_core.editing import EditOptions

    pipe = Pipeline.random(sampler_cfg=SamplerConfig(steps=1, refine_max_side=3))
    assert "From 3 on" in class_strength_info(pipe.patch_nums, max_side=3)
    picture = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)

    def edit(strength: int, steps: int) -> np.ndarray:
        options = EditOptions(class_id=2, seed=4, strength=strength, steps=steps)
        return np.asarray(pipe.edit(picture, None, options).image)

    assert np.array_equal(edit(3, 0), edit(3, 6))  # every refined scale is kept
    assert not np.array_equal(edit(2, 0), edit(2, 6))  # the 3×3 scale is regenerated


def test_expected_time_label():
    assert "fastest" in expected_time_label(PYRAMID_256, 0)
    timing = Timing(base_seconds=0.5, seconds_per_pass=0.1)
    extra = refinement_passes(PYRAMID_256, 2)
    label = expected_time_label(PYRAMID_256, 2, variants=2, timing=timing)
    assert f"{(0.5 + extra * 0.1) * 2:.1f} s for 2 image(s)" in label
    assert f"{len(PYRAMID_256) + extra} network passes" in label


def test_work_estimate_counts_windows_and_warns_before_long_jobs():
    from app.params import LONG_JOB_SECONDS, work_estimate

    timing = Timing(base_seconds=1.0, seconds_per_pass=0.0)
    assert work_estimate(PYRAMID_256, 0, 1, 2, timing) == "2 image(s), expected ≈ 2 s"
    long = work_estimate(PYRAMID_256, 0, 22, 2, timing)  # a 100 %-all-sides outpaint
    assert long.startswith("22 model windows × 2 variant(s), expected ≈ 44 s")
    assert 44 > LONG_JOB_SECONDS and long.endswith("a long job (Stop ends it)")
    assert work_estimate(PYRAMID_256, 0, 3, 1, None) == "3 model windows × 1 variant(s)"


def test_sampling_params_maps_and_clamps():
    notes: list[str] = []
    params = sampling_params(99, 2.5, 900.0, 0.95, 7.0, 3.0, max_steps=4, notes=notes)
    assert params == SamplingParams(steps=4, cfg=2.5, top_k=900, top_p=0.95, seed=7, variants=3)
    assert isinstance(params.top_k, int) and isinstance(params.seed, int)
    assert notes == ["Quality 99 → 4"]


@pytest.mark.parametrize(("kwargs", "note", "field", "value"), [
    ({"cfg": -1}, "CFG -1 → 0", "cfg", 0.0),
    ({"cfg": 50}, "CFG 50 → 10", "cfg", 10.0),
    ({"top_k": 99999}, "Top-k 99999 → 4096", "top_k", 4096),
    ({"top_k": 2.5}, "Top-k 2.5 → 2", "top_k", 2),
    ({"top_p": 5}, "Top-p 5 → 1", "top_p", 1.0),
    ({"variants": 0}, "Variants 0 → 1", "variants", 1),
    ({"variants": 100}, "Variants 100 → 8", "variants", 8),
    ({"seed": -3}, "Seed -3 → 0", "seed", 0),
    ({"seed": 2**70}, f"Seed {2**70} → {2**63 - 1}", "seed", 2**63 - 1),
])
def test_out_of_range_values_are_clamped_with_a_note(kwargs, note, field, value):
    values = {"steps": 1, "cfg": 1.0, "top_k": 10, "top_p": 0.9, "seed": 1, "variants": 1}
    values.update(kwargs)
    notes: list[str] = []
    params = sampling_params(**values, max_steps=3, notes=notes)
    assert getattr(params, field) == value and notes == [note]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"seed": 1.5}, "seed"),
    ({"seed": "abc"}, "seed"),
    ({"steps": float("nan")}, "Quality"),
    ({"cfg": "x"}, "CFG"),
    ({"variants": None}, "Variants"),
])
def test_values_that_are_not_numbers_are_refused(kwargs, words):
    values = {"steps": 1, "cfg": 1.0, "top_k": 10, "top_p": 0.9, "seed": 1, "variants": 1}
    values.update(kwargs)
    with pytest.raises(InputError, match=words):
        sampling_params(**values, max_steps=3)


def test_seed_parsing_and_randomise():
    assert parse_seed(12) == 12 and parse_seed("34") == 34 and parse_seed(5.0) == 5
    assert parse_seed("9223372036854775807") == 2**63 - 1  # exact: never through a float
    for empty in (None, "", "  "):
        assert 0 <= parse_seed(empty) <= MAX_SEED
    seeds = {int(randomize_seed()) for _ in range(20)}
    assert len(seeds) > 1 and all(0 <= s <= MAX_SEED for s in seeds)


def test_class_choices_use_the_pipeline_names(app_pipe):
    choices = class_choices(app_pipe.class_names, "🎲 random class")
    assert choices[0] == ("🎲 random class", NO_CLASS)
    assert choices[1] == (f"{app_pipe.class_names[0]} (0)", 0)
    assert len(choices) == app_pipe.num_classes + 1
    assert [v for _, v in class_choices(["cat", "dog"])] == [0, 1]
    assert class_choices(["cat", "dog"])[1][0] == "dog (1)"


def test_class_id_from_choice():
    assert class_id_from_choice(NO_CLASS, 10) is None
    assert class_id_from_choice(None, 10) is None
    assert class_id_from_choice("3", 10) == 3 and class_id_from_choice(9, 10) == 9
    for bad in (10, -2, "cat"):
        with pytest.raises(InputError):
            class_id_from_choice(bad, 10)


def test_outpaint_extents():
    assert outpaint_extents(["Left", "Top"], 25, (200, 100)) == {
        "left": 50, "right": 0, "top": 25, "bottom": 0}
    assert outpaint_extents(["right"], 1, (10, 10))["right"] == 1  # never 0 px
    with pytest.raises(InputError, match="direction"):
        outpaint_extents([], 25, (10, 10))
    with pytest.raises(InputError, match="Unknown"):
        outpaint_extents(["Up"], 25, (10, 10))
    notes: list[str] = []
    assert outpaint_extents(["Left"], 0, (100, 10), notes)["left"] == 5  # clamped to 5 %
    assert notes == ["Extent 0 → 5"]
    with pytest.raises(InputError, match="Extent"):
        outpaint_extents(["Left"], "wide", (10, 10))


def test_quality_label_handler(app_pipe):
    assert "network passes" in quality_label(app_pipe, 2, 1)
    assert quality_label(app_pipe, float("nan"), 1) == ""


# ------------------------------------------------------------------------------ error mapping
@pytest.mark.parametrize(("error", "expected"), [
    (InputError("Paint the area first."), "Paint the area first."),
    (ValueError("class id 12 out of range\nmore"), "Invalid input: class id 12 out of range"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"), "Out of memory"),
    (RuntimeError("CUDA error: out of memory"), "Out of memory"),
    (KeyError("secret internal key"), "Something went wrong (KeyError)"),
    (ZeroDivisionError("division by zero"), "Something went wrong (ZeroDivisionError)"),
    (NotImplementedError("fit='magic'"), "Not supported: fit='magic'"),
])
def test_friendly_message(error, expected):
    message = friendly_message(error)
    assert message.startswith(expected)
    assert "Traceback" not in message and "\n" not in message


def test_friendly_message_hides_internal_details():
    assert "secret" not in friendly_message(KeyError("secret internal key"))
    from PIL import UnidentifiedImageError

    assert "Could not read the image" in friendly_message(UnidentifiedImageError("x"))
    assert len(friendly_message(ValueError("x" * 5000))) < 400


# ------------------------------------------------------------------------------------ imaging
def test_to_pil_and_preview_strip():
    images = to_pil_images(torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)]))
    assert [im.getpixel((0, 0)) for im in images] == [(0, 0, 0), (255, 255, 255)]
    strip = preview_strip(images, min_height=16, gap=2)
    assert strip.size == (16 * 2 + 2, 16)
    minus_one = to_pil_images(-torch.ones(1, 3, 2, 2), (-1.0, 1.0))[0]
    assert minus_one.getpixel((1, 1)) == (0, 0, 0)


def test_confidence_overlay_whole_image():
    image = Image.new("RGB", (8, 8), (255, 255, 255))
    tile = ConfidenceTile(np.array([[0.0, 1.0], [1.0, 0.0]]), 0, 0, 8)
    overlay = np.asarray(confidence_overlay(image, [tile], alpha=1.0))
    low, high = heatmap_colors(np.array([0.0, 1.0]))
    assert (overlay[0, 0] == low).all() and (overlay[0, 7] == high).all()
    assert (overlay[3, 3] == low).all() and (overlay[4, 3] == high).all()  # token squares
    assert overlay.shape == (8, 8, 3)
    with pytest.raises(ValueError):
        confidence_overlay(image, [ConfidenceTile(np.zeros(4), 0, 0, 8)])


def test_confidence_map_places_windows_and_leaves_the_rest():
    # a 4×4 window at (left 2, top -1) on a 6-wide, 4-high image: rows -1..2, cols 2..5
    tile = ConfidenceTile(np.full((2, 2), 0.25), left=2, top=-1, side=4)
    values = confidence_map([tile], (6, 4))
    assert values.shape == (4, 6)
    assert np.isnan(values[:, :2]).all() and np.isnan(values[3]).all()
    assert (values[:3, 2:] == 0.25).all()
    image = Image.new("RGB", (6, 4), (10, 20, 30))
    overlay = np.asarray(confidence_overlay(image, [tile]))
    assert (overlay[0, 0] == (10, 20, 30)).all() and (overlay[0, 3] != (10, 20, 30)).any()


# ---------------------------------------------------------------------------------- streaming
def test_stream_work_yields_reports_then_result():
    def work(report):
        for i in range(3):
            report(i)
        return "done"

    events = list(stream_work(work))
    assert [e.item for e in events[:3] if isinstance(e, Reported)] == [0, 1, 2]
    assert events[-1] == Finished("done")


def test_stream_work_reraises_in_consumer():
    def work(report):
        report(1)
        raise ValueError("bad class")

    with pytest.raises(ValueError, match="bad class"):
        list(stream_work(work))


def test_closing_the_stream_stops_the_worker():
    stopped = threading.Event()
    calls = []

    def work(report):
        try:
            for i in range(1000):
                calls.append(i)
                report(i)
                threading.Event().wait(0.005)
        except RunCancelledError:
            stopped.set()
            raise
        return "finished"

    stream = stream_work(work)
    assert next(stream) == Reported(0)
    stream.close()  # what Gradio does when the Stop button cancels the event
    assert stopped.is_set() and len(calls) < 1000


# ------------------------------------------------------------------------------ runs/handlers
def test_run_generate_previews_every_scale(app_pipe):
    params = SamplingParams(steps=1, cfg=1.5, top_k=0, top_p=0.0, seed=3, variants=2)
    updates = list(run_generate(app_pipe, 4, params, preview_seconds=0.0))
    scales = len(app_pipe.patch_nums)
    previews = [u for u in updates if u.preview is not None and u.result is None]
    # per variant (one after the other): every scale but the last (the result), then "done"
    assert len(previews) == 2 * scales
    assert [u.message for u in previews[scales - 1:scales + 1]] == [
        "Variant 1/2 done", "Variant 2/2 · Scale 1/4 (1×1 tokens)"]
    assert [u.fraction for u in updates] == sorted(u.fraction for u in updates)
    result = updates[-1].result
    assert result is not None and len(result.images) == 2 and result.seed == 3
    assert result.images[0].size == (app_pipe.image_size, app_pipe.image_size)
    (tile,) = result.confidences[0]
    assert tile.values.shape == (app_pipe.patch_nums[-1],) * 2 and tile.side == 16
    again = list(run_generate(app_pipe, 4, params))[-1].result
    assert np.array_equal(np.asarray(again.images[1]), np.asarray(result.images[1]))


def test_previews_are_decoded_only_when_shown(app_pipe, monkeypatch):
    """With previews at most once per (here) 10^9 s, only the first scale is decoded for the
    live preview; every scale still moves the status and the progress; the result is the
    same as with a preview at every scale."""
    params = SamplingParams(steps=1, cfg=1.5, top_k=0, top_p=0.0, seed=3, variants=1)
    decodes = []
    decode = app_pipe.decode_latent
    monkeypatch.setattr(app_pipe, "decode_latent",
                        lambda f_hat: decodes.append(1) or decode(f_hat))
    every = list(run_generate(app_pipe, 4, params, preview_seconds=0.0))
    shown_every, decodes_every = sum(u.preview is not None for u in every), len(decodes)
    decodes.clear()
    rare = list(run_generate(app_pipe, 4, params, preview_seconds=1e9))
    scales = len(app_pipe.patch_nums)
    assert decodes_every == len(decodes) + scales - 2  # scales 1 … S-2 not decoded
    assert sum(u.preview is not None for u in rare) == shown_every - (scales - 2)
    assert [u.message for u in rare[:-1]] == [u.message for u in every[:-1]]  # not "Done in"
    assert np.array_equal(np.asarray(rare[-1].result.images[0]),
                          np.asarray(every[-1].result.images[0]))


def pngs_on_disk(value: object) -> list[str]:
    """The PNG paths in an output value (str, or nested lists/tuples), checked to exist."""
    if isinstance(value, str) and value.endswith(".png"):
        assert Path(value).is_file(), value
        return [value]
    if isinstance(value, (list, tuple)):
        return [path for item in value for path in pngs_on_disk(item)]
    return []


def test_generate_handler_streams_then_fills_the_gallery(app_pipe):
    outputs, written = [], []
    for output in generate_events(app_pipe, 2, 1, 1.5, 0, 0.0, 11, 2, False):
        outputs.append(output)
        written += pngs_on_disk(output[:3])  # on disk while Gradio copies them
    assert len(outputs) >= len(app_pipe.patch_nums)
    preview, gallery, files, status, state, selected = outputs[-1]
    assert selected is None  # new results: nothing selected (the gallery is re-synced)
    assert len({Path(f).name for f in files}) == 2  # unique download names
    assert len(gallery) == 2 and len(files) == 2 and all(f.endswith(".png") for f in files)
    assert isinstance(state, RunResult) and "seed 11" in status
    # images go to Gradio as PNG paths (never PIL: Gradio rewrites those in place), with the
    # same pixels as the result
    assert isinstance(preview, str) and Path(preview).name == "preview.png"
    assert [Path(path).name for path, _ in gallery] == [Path(f).name for f in files]
    assert len(written) == len(set(written))  # a new file for every value
    assert not any(Path(path).exists() for path in written)  # deleted when the run ended


def test_stream_outputs_deletes_a_value_s_files_at_the_next_update(app_pipe):
    previews = []
    for output in generate_events(app_pipe, 2, 0, 1.5, 0, 0.0, 11, 1, False):
        if isinstance(output[0], str):
            assert Path(output[0]).is_file()
            assert not any(Path(path).exists() for path in previews)  # earlier values'
            previews.append(output[0])
    assert len(previews) >= 2


def test_output_folder_writes_new_files_and_cleans_up():
    image = Image.new("RGB", (3, 2), (10, 20, 30))
    with OutputFolder() as files:
        first, second = files.png(image, "a.png"), files.png(image, "a.png")
        assert first != second and Path(first).name == Path(second).name == "a.png"
        with Image.open(second) as saved:
            assert saved.format == "PNG" and np.array_equal(np.asarray(saved),
                                                            np.asarray(image))
        files.clear()
        assert not Path(first).exists() and files.root.is_dir()
        third = files.png(image, "b.png")
    assert not Path(third).exists() and not files.root.exists()
    dropped = OutputFolder()  # a generator dropped without being closed
    root = dropped.root
    del dropped
    assert not root.exists()


def test_generate_slip_is_a_status_line_and_one_log_line(app_pipe, caplog):
    """A user slip leaves every output as it was (gr.skip) and never raises: gr.Error would
    cover the preview, results and downloads with an overlay. The log gets one line."""
    with caplog.at_level("INFO", logger="app.handlers"):
        outputs = list(generate_events(app_pipe, 99, 1, 1.5, 0, 0.0, 1, 1, False))
    (preview, gallery, files, status, state, selected), = outputs
    assert "Unknown class 99" in status and status.startswith("**Not run:**")
    assert all(isinstance(value, type(gr.skip())) for value in
               (preview, gallery, files, state, selected))
    assert [r.exc_info for r in caplog.records] == [None]
    assert "seed" in list(generate_events(app_pipe, 1, 1, 1.5, 0, 0.0, "x", 1, False))[0][3]


def test_unexpected_failures_are_a_status_line_with_the_traceback_in_the_log(caplog):
    def broken():
        yield from ()
        raise KeyError("internal")

    with caplog.at_level("INFO", logger="app.handlers"):
        (*_, status, _, _), = list(stream_outputs(broken(), heatmap=False))
    assert status.startswith("**Failed:**") and "KeyError" in status
    assert caplog.records[-1].exc_info is not None


def test_heatmap_toggle_and_edit_result():
    image = Image.new("RGB", (4, 4), (255, 255, 255))
    result = RunResult("generate", (image,), ((ConfidenceTile(np.zeros((2, 2)), 0, 0, 4),),), 5,
                       0.1)
    plain = gallery_items(result, heatmap=False)[0][0]
    assert plain is image
    toggle = toggle_heatmap(result, True)
    (path, caption), = next(toggle)
    with Image.open(path) as overlaid:
        assert np.asarray(overlaid).mean() < 255 and caption.endswith("confidence")
    assert list(toggle) == [] and not Path(path).exists()  # deleted once Gradio copied it
    assert gallery_items(None, True) == [] and list(toggle_heatmap(None, True)) == [[]]
    editor = edit_result(result, 0)
    value, status, tab = next(editor)
    assert status.startswith("Editing result #1")
    assert value["background"] == value["composite"] and value["layers"] == []
    with Image.open(value["background"]) as picture:
        assert picture.mode == "RGBA" and np.array_equal(
            np.asarray(picture.convert("RGB")), np.asarray(image))
    editor.close()
    assert not Path(value["background"]).exists()
    editor_value_, status, tab = next(edit_result(None, 0))  # no result: a status line only
    assert "Nothing to edit yet" in status and isinstance(editor_value_, type(gr.skip()))


# ------------------------------------------------------------------------------------- stop
def test_stop_signal_is_fresh_per_user_and_ends_a_run(app_pipe):
    import copy

    from app.handlers import request_stop
    from app.runs import UserRun
    from app.streaming import StopSignal

    idle = UserRun()
    assert request_stop(idle).startswith("Nothing is running") and not idle.is_set()
    idle.begin()
    assert request_stop(idle) == "Stopped." and idle.is_set()
    stop = StopSignal()
    assert request_stop(stop) == "Stopped."
    assert stop.is_set() and not copy.deepcopy(stop).is_set()  # gr.State copies per user
    params = SamplingParams(steps=0, cfg=1.5, top_k=0, top_p=0.0, seed=1, variants=1)
    outputs = list(stream_outputs(run_generate(app_pipe, 1, params, stop), heatmap=False))
    assert outputs[-1][3] == "Stopped."
    assert all(not isinstance(out[4], RunResult) for out in outputs)
    # a new run forgets an old stop request
    finished = list(generate_events(app_pipe, 1, 0, 1.5, 0, 0.0, 1, 1, False, stop=stop))
    assert isinstance(finished[-1][4], RunResult) and not stop.is_set()


def test_after_run_keeps_earlier_results_and_shows_before_after():
    from app.handlers import HISTORY_SIZE, after_run

    image = Image.new("RGB", (4, 4), (10, 200, 30))
    first = RunResult("generate", (image, image), ((), ()), 1, 0.1)
    edit = RunResult("inpaint", (image,), ((),), 2, 0.1, source=Image.new("RGB", (4, 4)))
    step = after_run(first, None, [])
    selection, compare, shown, history = next(step)
    assert compare is None and len(shown) == len(history) == 2  # generate: no before / after
    step.close()
    _, compare, shown, history = next(after_run(edit, 0, history))
    assert len(history) == 3 and history[0][0] == edit.run_id  # newest first, earlier kept
    assert len(compare) == 2 and all(Path(path).name.endswith(".png") for path in compare)
    _, _, _, again = next(after_run(edit, 0, history))  # after a slip: the same result
    assert again == history  # not added twice
    many = history
    for _ in range(HISTORY_SIZE):
        many = next(after_run(RunResult("generate", (image,), ((),), 3, 0.1), None, many))[3]
    assert len(many) == HISTORY_SIZE


def test_in_fresh_thread_returns_raises_and_ends_its_thread():
    import threading

    from app.streaming import in_fresh_thread

    seen = []
    assert in_fresh_thread(lambda: seen.append(threading.current_thread()) or 7) == 7
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()
    with pytest.raises(ValueError, match="bad"):
        in_fresh_thread(lambda: (_ for _ in ()).throw(ValueError("bad")))


def test_status_only_updates_are_throttled_but_previews_and_the_result_go_out(app_pipe):
    """One Gradio event per scale cost a fast GPU edit most of its served time: status-only
    updates closer than ``status_seconds`` to the last one are dropped; the first update,
    every preview and the result are not."""
    params = SamplingParams(steps=1, cfg=1.5, top_k=0, top_p=0.0, seed=3, variants=1)
    updates = list(run_generate(app_pipe, 4, params, preview_seconds=1e9))  # one preview
    with_preview = sum(u.preview is not None for u in updates)
    assert with_preview < len(updates) - 2  # the stream has status-only updates to drop

    def statuses(seconds: float) -> list[str]:
        return [status for _, _, _, status, _, _ in
                stream_outputs(iter(updates), heatmap=False, status_seconds=seconds)]

    every, throttled = statuses(0.0), statuses(1e9)
    assert every == [u.message for u in updates]
    kept = [u.message for i, u in enumerate(updates)
            if i == 0 or u.preview is not None or u.result is not None]
    assert throttled == kept and len(throttled) < len(every)
    assert throttled[-1] == every[-1] and "Done in" in throttled[-1]
