"""Issue #17 item 9: ``generate --columns`` is clamped to the number of images or refused below
1, and the grid is bounded before anything is generated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from hmar_core import Pipeline
from hmar_core.cli import MAX_GRID_PIXELS, grid_layout, main, save_grid


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gen") / "model"
    Pipeline.random(seed=0).save_pretrained(folder)
    return folder


def test_columns_are_clamped_to_the_images(model, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["generate", "--checkpoint", str(model), "--num", "2", "--columns", "1000",
                 "--seed", "1", "--out", str(out)]) == 0
    side = Pipeline.from_pretrained(model).image_size
    assert Image.open(out).size == (2 * side, side)


@pytest.mark.parametrize(("option", "value"), [("--columns", "0"), ("--columns", "-1"),
                                                ("--num", "0"), ("--num", "-5")])
def test_columns_and_num_below_one_are_refused(model, tmp_path, option, value):
    out = tmp_path / "grid.png"
    assert main(["generate", "--checkpoint", str(model), option, value, "--out", str(out)]) == 2
    assert not out.exists()


def test_grid_layout_is_bounded():
    assert grid_layout(5, None, 16, 16) == (1, 5)
    assert grid_layout(20, None, 16, 16) == (3, 8)
    assert grid_layout(2, 100_000, 64, 64) == (1, 2)
    assert grid_layout(7, 3, 64, 64) == (3, 3)
    count = MAX_GRID_PIXELS // (64 * 64) + 1
    with pytest.raises(ValueError, match="MP limit"):
        grid_layout(count, None, 64, 64)
    with pytest.raises(ValueError, match="--columns must be at least 1"):
        grid_layout(2, -1, 64, 64)


def test_save_grid_clamps_and_fills_white(tmp_path):
    images = torch.zeros(3, 3, 4, 5)
    path = save_grid(images, tmp_path / "g.png", columns=2)
    grid = Image.open(path)
    assert grid.size == (10, 8)
    assert grid.getpixel((0, 0)) == (0, 0, 0) and grid.getpixel((9, 7)) == (255, 255, 255)
    assert Image.open(save_grid(images, tmp_path / "h.png", columns=99)).size == (15, 4)
