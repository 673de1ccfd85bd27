"""Editing handlers (Inpaint, Outpaint, Class edit), called directly on the tiny random model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from app import InputError
from app import handlers as h
from app.components import RefusedPicture
from app.params import SamplingParams, edit_options
from app.runs import RunResult, run_edit
from hmar_core.editing import EditOptions
from hmar_core.variants import VariantSessions

PARAMS = SamplingParams(steps=1, cfg=1.5, top_k=0, top_p=0.0, seed=4, variants=2)


def picture(height: int = 24, width: int = 32) -> np.ndarray:
    return (np.random.RandomState(1).rand(height, width, 3) * 255).astype(np.uint8)


def editor(background: np.ndarray | None, box: tuple[slice, slice] | None = None) -> dict:
    """An ImageEditor value as the browser sends it: RGBA background, one RGBA layer."""
    if background is None:
        return {"background": None, "layers": [], "composite": None}
    height, width = background.shape[:2]
    rgba = np.dstack([background, np.full((height, width), 255, np.uint8)])
    layer = np.zeros((height, width, 4), np.uint8)
    if box is not None:
        layer[box] = (255, 46, 136, 255)
    return {"background": rgba, "layers": [layer], "composite": rgba}


def controls(**overrides: object) -> h.EditControls:
    values = {"quality": 1, "cfg": 1.5, "top_k": 0, "top_p": 0.0, "seed": 4, "variants": 2,
              "grow": 1, "feather": 0, "only_masked": False, "padding": 8, "heatmap": False}
    values.update(overrides)
    return h.EditControls(**values)


def final(outputs: list) -> tuple:
    preview, gallery, files, status, state, _ = outputs[-1]
    assert isinstance(state, RunResult) and status.startswith("Done")
    return gallery, files, state


# ------------------------------------------------------------------------------- options
def test_edit_options_map_the_controls():
    options = edit_options(PARAMS, class_id=3, strength=2, num_scales=4, grow=2, feather=5,
                           only_masked=True, padding=12)
    assert options == EditOptions(class_id=3, seed=4, steps=1, cfg=1.5, top_k=0, top_p=0.0,
                                  strength=2, grow=2, feather=5, fit="masked", padding=12,
                                  num_variants=2)
    assert edit_options(PARAMS, class_id=None, strength=0, num_scales=4).fit == "whole"


@pytest.mark.parametrize(("field", "value", "expected", "note"), [
    ("strength", 4, 3, "Strength 4 → 3"), ("strength", -1, 0, "Strength -1 → 0"),
    ("grow", 1.5, 2, "Grow mask 1.5 → 2"), ("feather", -2, 0, "Feather -2 → 0"),
    ("padding", 9999, 256, "Crop padding 9999 → 256")])
def test_edit_options_clamp_out_of_range_with_a_note(field, value, expected, note):
    kwargs = {"strength": 0, "grow": 1, "feather": 8, "padding": 8, field: value}
    notes: list[str] = []
    options = edit_options(PARAMS, class_id=None, num_scales=4, notes=notes, **kwargs)
    assert getattr(options, field) == expected and notes == [note]
    with pytest.raises(InputError, match="number"):
        edit_options(PARAMS, class_id=None, num_scales=4, **{**kwargs, field: None})


# ----------------------------------------------------------------------------- bad input
def slip(outputs: list) -> str:
    """The status of a run that did not start (one output, the others left as they were)."""
    (*_, status, _, _), = outputs
    assert status.startswith("**Not run:**")
    return status


def test_missing_picture_or_mask_are_status_lines(app_pipe):
    assert "Upload a picture" in slip(list(
        h.inpaint_events(app_pipe, None, editor(None), -1, 0, controls())))
    assert "Paint over the area" in slip(list(
        h.inpaint_events(app_pipe, None, editor(picture()), -1, 0, controls())))
    assert "Tick at least one direction" in slip(list(
        h.outpaint_events(app_pipe, editor(picture()), [], 25, -1, controls())))
    assert "Pick the target class" in slip(list(
        h.class_edit_events(app_pipe, None, editor(picture()), -1, 1, controls())))
    assert "Paint over the area to keep" in slip(list(
        h.inpaint_events(app_pipe, None, editor(picture()), -1, 0, controls(area="outside"))))


def test_huge_picture_is_refused(app_pipe, monkeypatch):
    monkeypatch.setattr(h, "MAX_PIXELS", 100)
    assert "too large" in slip(list(
        h.outpaint_events(app_pipe, editor(picture()), ["Left"], 25, -1, controls())))
    refused = RefusedPicture("The picture is too large: use one under 40 megapixels.")
    assert "40 megapixels" in slip(list(
        h.class_edit_events(app_pipe, None, refused, 2, 1, controls())))


@pytest.mark.parametrize(("area", "inside"), [("outside", False), ("all", None)])
def test_inverted_and_whole_picture_masks(app_pipe, area, inside):
    source = picture()
    box = (slice(6, 14), slice(10, 22))
    outputs = list(h.inpaint_events(app_pipe, None, editor(source, box), -1, 0,
                                    controls(area=area, grow=0, feather=0)))
    _, _, state = final(outputs)
    result = np.asarray(state.images[0].convert("RGB"))
    if inside is False:  # the painted box is kept, the rest may change
        assert np.array_equal(result[box], source[box])
        assert (result != source).any()
    else:
        assert (result != source).any()


# ------------------------------------------------------------------------------- results
@pytest.mark.parametrize("only_masked", [False, True])
def test_inpaint_keeps_unmasked_pixels(app_pipe, only_masked):
    source = picture()
    box = (slice(6, 14), slice(10, 22))
    outputs = list(h.inpaint_events(app_pipe, None, editor(source, box), -1, 0,
                                    controls(only_masked=only_masked)))
    assert len(outputs) > len(app_pipe.patch_nums)  # a preview per scale, then the result
    gallery, files, state = final(outputs)
    assert len(gallery) == 2 and all(f.endswith(".png") for f in files)
    mask = np.zeros(source.shape[:2], bool)
    mask[box] = True
    for image in state.images:
        result = np.asarray(image)
        assert result.shape == source.shape
        assert np.array_equal(result[~mask], source[~mask])  # feather 0: exact outside
        assert (result[mask] != source[mask]).any()


def test_inpaint_feather_only_touches_pixels_near_the_mask(app_pipe):
    source = picture(32, 32)
    box = (slice(12, 20), slice(12, 20))
    outputs = list(h.inpaint_events(app_pipe, None, editor(source, box), 2, 0,
                                    controls(feather=4, variants=1)))
    result = np.asarray(final(outputs)[2].images[0])
    far = np.ones((32, 32), bool)
    far[12 - 4:20 + 4, 12 - 4:20 + 4] = False
    assert np.array_equal(result[far], source[far])


def test_outpaint_extends_the_canvas(app_pipe):
    source = picture(20, 40)
    outputs = list(h.outpaint_events(app_pipe, editor(source), ["Left", "Bottom"], 50, -1,
                                     controls(variants=1)))
    gallery, files, state = final(outputs)
    result = np.asarray(state.images[0])
    assert result.shape == (20 + 10, 40 + 20, 3)
    assert np.array_equal(result[:20, 20:], source)  # the original is kept
    assert state.mode == "outpaint"


def test_class_edit_whole_picture_and_heatmap(app_pipe):
    source = picture(16, 16)
    outputs = list(h.class_edit_events(app_pipe, None, editor(source), 5, 1,
                                       controls(heatmap=True)))
    gallery, _, state = final(outputs)
    assert state.mode == "class edit" and len(state.images) == 2
    assert not np.array_equal(np.asarray(state.images[0]), source)
    (tile,) = state.confidences[0]
    assert tile.values.shape == (4, 4) and (tile.left, tile.top, tile.side) == (0, 0, 16)
    assert "confidence" in gallery[0][1]


def test_edit_previews_are_decoded_only_when_shown(app_pipe, monkeypatch):
    """An edit decodes a scale for the live preview only when one is due: with previews at
    most once per 10^9 s, the first scale and the result; at 0 s, every scale."""
    source = Image.fromarray(picture(24, 32))
    mask = np.zeros((24, 32), bool)
    mask[4:10, 4:12] = True
    options = dataclasses.replace(edit_options(PARAMS, class_id=None, strength=0,
                                               num_scales=4), num_variants=1)
    backend = app_pipe.backend
    decodes = []
    decode = backend.decode
    monkeypatch.setattr(backend, "decode", lambda f_hat: decodes.append(1) or decode(f_hat))
    runs = {}
    for seconds in (0.0, 1e9):
        decodes.clear()
        updates = list(run_edit(app_pipe, "inpaint", source, mask, options,
                                preview_seconds=seconds))
        runs[seconds] = (len(decodes), updates)
    scales = len(app_pipe.patch_nums)
    assert runs[0.0][0] == scales + 1 and runs[1e9][0] == 2  # previews + the result
    shown = {s: sum(u.preview is not None for u in updates) for s, (_, updates) in runs.items()}
    assert shown[0.0] - shown[1e9] == scales - 1
    assert [u.message for u in runs[1e9][1][:-1]] == [u.message for u in runs[0.0][1][:-1]]
    assert np.array_equal(np.asarray(runs[0.0][1][-1].result.images[0]),
                          np.asarray(runs[1e9][1][-1].result.images[0]))


def test_run_edit_progress_session_and_windows(app_pipe):
    session = VariantSessions()  # the app's: one cache per variant
    source = Image.fromarray(picture(24, 32))
    mask = np.zeros((24, 32), bool)
    mask[4:10, 4:12] = True
    options = edit_options(PARAMS, class_id=None, strength=0, num_scales=4)
    first = list(run_edit(app_pipe, "inpaint", source, mask, options, session=session))
    fractions = [u.fraction for u in first]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    result = first[-1].result
    (tile,) = result.confidences[0]
    assert (tile.left, tile.top, tile.side) == (0, -4, 32)  # "whole" fit: padded square
    again = list(run_edit(app_pipe, "inpaint", source, mask, options, session=session))
    assert "cached" in again[-1].message
    assert session[0].hits > 0 and session[1].hits > 0  # both variants resumed
    for a, b in zip(result.images, again[-1].result.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="edit mode"):
        list(run_edit(app_pipe, "erase", source, mask, options))


def test_class_edits_revise_the_kept_scales_and_inpaints_do_not(app_pipe, monkeypatch):
    """The app's class edit asks for the model's ``revise`` default, inpainting for none."""
    seen = []

    def spy(*args: object, **kwargs: object):
        options = edit_options(*args, **kwargs)
        seen.append(options.revise)
        return options

    monkeypatch.setattr(h, "edit_options", spy)
    final(list(h.class_edit_events(app_pipe, None, editor(picture(16, 16)), 5, 1, controls())))
    final(list(h.inpaint_events(app_pipe, None, editor(picture(), (slice(4, 12), slice(6, 18))),
                                -1, 0, controls())))
    assert seen == [app_pipe.class_edit_defaults().revise, None]
