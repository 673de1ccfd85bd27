"""Editing building blocks without a model: conversions, masks, windows, schedules."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from hmar_core import images as im
from hmar_core.editing.masks import composite, feather_weights, token_masks
from hmar_core.editing.outpaint import plan_outpaint_windows, prefill_canvas
from hmar_core.editing.spec import EditOptions, EditSpec, _cosine_entry, edit_schedule
from hmar_core.schedules import default_schedule, remask_counts

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- conversions
@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK",
                                  "YCbCr"])
@pytest.mark.parametrize("size", [(1, 1), (37, 91), (16, 16)])
def test_to_rgb_any_mode(mode, size):
    rgb = RNG.integers(0, 256, (*size, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    out = im.to_rgb(image)
    assert out.dtype == np.uint8 and out.shape == (*size, 3)


def test_rgba_composited_on_white_and_16_bit_scaled():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)        # transparent → white
    rgba[0, 1] = (10, 20, 30, 255)   # opaque → itself
    out = im.to_rgb(Image.fromarray(rgba, "RGBA"))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [10, 20, 30]
    sixteen = np.array([[0, 65535], [257 * 100, 257 * 7]], np.uint16)
    gray = im.to_rgb(Image.fromarray(sixteen))  # mode I;16
    assert gray[..., 0].tolist() == [[0, 255], [100, 7]]
    assert im.to_rgb(sixteen)[..., 1].tolist() == [[0, 255], [100, 7]]


def test_to_rgb_numpy_layouts():
    assert im.to_rgb(np.ones((3, 4), bool)).max() == 255
    assert im.to_rgb(np.full((3, 4, 1), 0.5, np.float32))[0, 0, 0] == 128
    la = np.zeros((3, 4, 2), np.uint8)  # black, fully transparent → white
    assert (im.to_rgb(la) == 255).all()


@pytest.mark.parametrize("bad", [np.zeros((0, 5, 3), np.uint8), Image.new("RGB", (0, 4)),
                                 [[1, 2]], "image.png", np.zeros((4, 4, 5), np.uint8)])
def test_bad_images_raise(bad):
    with pytest.raises(ValueError):
        im.to_rgb(bad)


def test_mask_threshold_alpha_and_resize(caplog):
    gray = np.array([[0, 127, 128, 255]], np.uint8)
    assert im.to_mask(gray, (1, 4)).tolist() == [[False, False, True, True]]
    assert im.to_mask(np.array([[0.2, 0.7]]), (1, 2)).tolist() == [[False, True]]
    layer = np.zeros((2, 2, 4), np.uint8)
    layer[0, 0, 3] = 255  # the brush painted one pixel
    assert im.to_mask(Image.fromarray(layer, "RGBA"), (2, 2)).tolist() == [[True, False],
                                                                           [False, False]]
    with caplog.at_level(logging.WARNING, logger="hmar_core.images"):
        resized = im.to_mask(np.ones((8, 8), bool), (4, 6))
    assert resized.shape == (4, 6) and resized.all() and "resizing the mask" in caplog.text
    for bad in (None, [[1]], np.zeros((0, 3))):
        with pytest.raises(ValueError):
            im.to_mask(bad, (2, 2))


# --------------------------------------------------------------------------------- windows
def test_windows_crop_and_paste():
    rgb = RNG.integers(0, 256, (5, 9, 3), dtype=np.uint8)
    window = im.Window.whole(5, 9)
    assert window == im.Window(0, -2, 9)
    crop = im.crop_window(rgb, window)
    assert crop.shape == (9, 9, 3) and (crop[2:7] == rgb).all() and (crop[0] == rgb[0]).all()
    assert (im.paste_window(rgb, crop, window) == rgb).all()
    mask = np.zeros((20, 30), bool)
    mask[2:4, 25:29] = True
    around = im.Window.around(mask, 3)
    assert around.side == 10 and around.left + around.side <= 30 and around.top >= 0
    assert im.crop_window(mask, im.Window(-2, -2, 4)).sum() == 0


def test_mask_coverage_any_overlap():
    mask = np.zeros((64, 64), bool)
    mask[5, 5] = True
    small = im.mask_coverage(mask, 16)
    assert small.sum() == 1 and small[1, 1]
    assert im.mask_coverage(np.eye(3, dtype=bool), 7).sum() > 0


# ----------------------------------------------------------------------------------- masks
def test_token_masks_rules():
    pixel = torch.zeros(1, 16, 16, dtype=torch.bool)
    pixel[0, 0, 0] = True  # one pixel → one final token, any overlap
    no_grow = token_masks(pixel, (1, 2, 3, 4), grow=0)
    assert [int(m.sum()) for m in no_grow] == [0, 0, 0, 1]
    grown = token_masks(pixel, (1, 2, 3, 4), grow=1)
    assert int(grown[-1].sum()) == 4  # 2x2 in the corner
    generous = token_masks(pixel, (1, 2, 3, 4), grow=0, coarse_threshold=0.0)
    assert all(int(m.sum()) == 1 for m in generous)
    full = token_masks(torch.ones(2, 16, 16, dtype=torch.bool), (1, 2, 3, 4))
    assert all(bool(m.all()) and m.shape[0] == 2 for m in full)
    with pytest.raises(ValueError):
        token_masks(pixel.float(), (1, 2, 3, 4))
    with pytest.raises(ValueError):
        token_masks(pixel, (1, 2, 3, 4), grow=-1)


def test_feather_weights_exact_support():
    mask = np.zeros((40, 40), bool)
    mask[15:20, 10:30] = True
    for feather in (0, 1, 4, 9):
        w = feather_weights(mask, feather)
        assert (w[mask] == 1).all()
        import cv2

        near = cv2.dilate(mask.astype(np.uint8), np.ones((2 * feather + 1,) * 2, np.uint8)) > 0
        assert (w[~near] == 0).all()
        assert ((w >= 0) & (w <= 1)).all()
    original = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    generated = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    mixed = composite(original, generated, feather_weights(mask, 6))
    assert (mixed[mask] == generated[mask]).all()
    assert (mixed[:5] == original[:5]).all()


def test_composite_blends_only_where_the_weights_are_and_equals_the_dense_formula():
    original = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    generated = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    weights = np.zeros((30, 40), np.float32)
    weights[7:19, 22:35] = RNG.random((12, 13)).astype(np.float32)
    weights[10, 25] = 0.0  # a zero inside the box keeps its original bytes too
    dense = np.rint(weights[..., None] * generated + (1 - weights[..., None]) * original.astype(
        np.float32))
    expected = np.where(weights[..., None] > 0, np.clip(dense, 0, 255).astype(np.uint8), original)

    mixed = composite(original, generated, weights)

    np.testing.assert_array_equal(mixed, expected)
    assert mixed is not original
    none = composite(original, generated, np.zeros((30, 40), np.float32))
    np.testing.assert_array_equal(none, original)
    assert none is not original


# ------------------------------------------------------------------------------- schedules
def test_edit_schedule_rules():
    patch_nums = (1, 2, 3, 4)
    base = default_schedule(patch_nums)
    labels = torch.zeros(1, dtype=torch.int64)
    source = [torch.zeros(1, pn * pn, dtype=torch.int64) for pn in patch_nums]
    regen = [torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool),
             torch.zeros(1, 9, dtype=torch.bool), torch.zeros(1, 16, dtype=torch.bool)]
    regen[3][0, :2] = True
    spec = EditSpec(tuple(source), tuple(regen), labels)
    schedule = edit_schedule(base, spec, 4)
    assert schedule[:2] == base[:2]          # nothing kept: the generation schedule
    assert schedule[2] == (9,)               # all kept: no refinement (no network either)
    assert len(schedule[3]) == 3 and sum(schedule[3]) == 16  # min(steps, free=2) steps
    assert edit_schedule(base, EditSpec(tuple(source), tuple(regen), labels, 4), 4) == (
        (1,), (4,), (9,), (16,))
    for n in (2, 9, 256):
        for steps in (1, 3, 8):
            entry = _cosine_entry(n, steps)
            counts = remask_counts(entry)
            assert sum(entry) == n and min(entry) >= 1 and counts[0] == n - 1
            assert all(a > b for a, b in zip(counts, counts[1:]))


def test_edit_spec_validation_and_empty():
    labels = torch.zeros(2, dtype=torch.int64)
    spec = EditSpec.empty((1, 2), labels)
    assert spec.keep(0) is None and spec.keep(1) is None
    with pytest.raises(ValueError):
        EditSpec(spec.source_tokens, spec.regenerate, labels, strength=3)
    with pytest.raises(ValueError):
        EditSpec(spec.source_tokens, spec.regenerate[:1], labels)
    for bad in ({"fit": "crop"}, {"feather": -1}, {"num_variants": 0}, {"grow": 1.5},
                {"coarse_threshold": 1.0}, {"fine_seed": 3}, {"strength": True}):
        with pytest.raises(ValueError):
            EditOptions(**bad)


# -------------------------------------------------------------------------------- outpaint
@pytest.mark.parametrize("size,extents,half", [
    ((37, 91), {"right": 200}, True),
    ((50, 50), {"left": 60, "top": 60, "right": 60, "bottom": 60}, True),
    ((20, 10), {"bottom": 35}, True), ((1, 1), {"right": 1}, True), ((30, 30), {"left": 5}, True),
    ((1, 1), {"left": 3, "top": 2}, False),  # a 1-pixel original cannot fill half a window
])
def test_outpaint_windows_keep_half_known(size, extents, half):
    height, width = size
    windows = plan_outpaint_windows(height, width, **extents)
    canvas_h = height + extents.get("top", 0) + extents.get("bottom", 0)
    canvas_w = width + extents.get("left", 0) + extents.get("right", 0)
    known = np.zeros((canvas_h, canvas_w), bool)
    top, left = extents.get("top", 0), extents.get("left", 0)
    known[top:top + height, left:left + width] = True
    assert windows
    for window in windows:
        inside = window.inside(canvas_h, canvas_w)
        assert (known[inside].mean() >= 0.5 or not half) and not known[inside].all()
        known |= inside
    assert known.all()


def test_outpaint_plan_limits_and_prefill():
    assert plan_outpaint_windows(10, 10) == []
    with pytest.raises(ValueError):
        plan_outpaint_windows(10, 10, left=-1)
    with pytest.raises(ValueError):
        plan_outpaint_windows(4, 4, right=1000, max_windows=8)
    rgb = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    for fill in ("replicate", "mean"):
        canvas, known = prefill_canvas(rgb, 2, 3, 4, 5, fill)
        assert canvas.shape == (15, 13, 3) and (canvas[4:10, 2:10] == rgb).all()
        assert known.sum() == 48
    with pytest.raises(ValueError):
        prefill_canvas(rgb, 1, 0, 0, 0, "noise")
