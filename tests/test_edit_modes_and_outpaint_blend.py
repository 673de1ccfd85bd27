"""Edits keep the input's mode (alpha re-applied, greyscale stays greyscale); outpaint windows
overlap and blend (issue #18)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hmar_core import Pipeline
from hmar_core.editing.outpaint import plan_outpaint_windows, window_masks


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.random(seed=0)


def rgba_picture() -> Image.Image:
    rgba = np.zeros((24, 20, 4), np.uint8)
    rgba[..., :3] = (np.random.RandomState(3).rand(24, 20, 3) * 255).astype(np.uint8)
    rgba[..., 3] = 255
    rgba[:, :6, 3] = 0  # a transparent left strip
    rgba[:, 6:9, 3] = 128
    return Image.fromarray(rgba)


def test_inpaint_re_applies_the_alpha(pipe):
    source = rgba_picture()
    out = pipe.inpaint(source, np.ones((24, 20), bool), seed=0, steps=0)
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3], np.asarray(source)[..., 3])


def test_outpaint_keeps_the_alpha_of_the_original_and_makes_the_new_area_opaque(pipe):
    source = rgba_picture()
    out = pipe.outpaint(source, left=5, top=3, seed=0, steps=0)
    alpha = np.asarray(out)[..., 3]
    assert out.mode == "RGBA" and out.size == (25, 27)
    assert np.array_equal(alpha[3:, 5:], np.asarray(source)[..., 3])
    assert (alpha[:3] == 255).all() and (alpha[:, :5] == 255).all()


def test_greyscale_stays_greyscale(pipe):
    grey = (np.arange(24 * 20) % 251).reshape(24, 20).astype(np.uint8)
    assert pipe.inpaint(grey, np.ones((24, 20), bool), seed=0, steps=0).mode == "L"
    assert pipe.outpaint(Image.fromarray(grey), right=4, seed=0, steps=0).mode == "L"


def test_later_windows_regenerate_an_overlap_band_of_earlier_ones():
    height = width = 12
    extents = {"left": 12, "right": 12, "top": 12, "bottom": 12}
    windows = plan_outpaint_windows(height, width, **extents)
    assert len(windows) > 4
    known = np.zeros((36, 36), bool)
    known[12:24, 12:24] = True
    abutting = window_masks(known, windows, overlap=0)
    blended = window_masks(known, windows, overlap=3)
    # without overlap the masks tile the new area; with it later windows reach back into
    # what earlier windows made (never into the original)
    assert sum(m.sum() for m in abutting) == (~known).sum()
    assert sum(m.sum() for m in blended) > (~known).sum()
    assert not any((m & known).any() for m in blended)
    assert blended[0].sum() == abutting[0].sum()  # nothing was generated before window 1
    assert all(b.sum() >= a.sum() for a, b in zip(abutting, blended))
    with pytest.raises(ValueError, match="overlap"):
        window_masks(known, windows, overlap=-1)


def test_cli_saves_a_transparent_result_as_jpeg(pipe, tmp_path):
    """The result keeps the alpha; a .jpg output (no alpha in JPEG) still saves."""
    from hmar_core.cli import main

    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    rgba_picture().save(tmp_path / "in.png")
    Image.fromarray(np.full((24, 20), 255, np.uint8)).save(tmp_path / "mask.png")
    out = tmp_path / "out.jpg"
    assert main(["inpaint", str(tmp_path / "in.png"), str(tmp_path / "mask.png"), "--out",
                 str(out), "--seed", "1", "--checkpoint", str(folder)]) == 0
    with Image.open(out) as saved:
        assert saved.format == "JPEG" and saved.size == (20, 24)
