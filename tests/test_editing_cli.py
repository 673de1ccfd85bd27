"""``python -m hmar_core inpaint | outpaint | edit`` on a saved tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hmar_core import Pipeline
from hmar_core.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("edit_cli")
    Pipeline.random(seed=0).save_pretrained(folder / "model")
    y, x = np.mgrid[0:30, 0:40]
    Image.fromarray(np.stack([x * 6, y * 8, x + y], -1).astype(np.uint8)).save(folder / "img.png")
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 10:30] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    return folder


def test_cli_edit_commands(files):
    model, image = str(files / "model"), str(files / "img.png")
    out = files / "out"
    assert main(["inpaint", image, str(files / "mask.png"), "--checkpoint", model, "--seed", "1",
                 "--variants", "2", "--fit", "masked", "--out", str(out / "in.png"),
                 "--previews", str(out / "previews"), "--confidence", str(out / "conf.png")]) == 0
    assert (out / "in_0.png").is_file() and (out / "in_1.png").is_file()
    assert Image.open(out / "in_0.png").size == (40, 30)
    assert len(list((out / "previews").glob("*.png"))) == 8 and (out / "conf.png").is_file()
    assert main(["outpaint", image, "--checkpoint", model, "--right", "20", "--top", "6",
                 "--steps", "0", "--out", str(out / "wide.png")]) == 0
    assert Image.open(out / "wide.png").size == (60, 36)
    assert main(["edit", image, "--class", "3", "--checkpoint", model, "--steps", "0",
                 "--out", str(out / "class.png")]) == 0
    assert (out / "class.png").is_file()


def test_cli_bad_input_exit_code(files):
    model, image = str(files / "model"), str(files / "img.png")
    assert main(["edit", image, "--class", "42", "--checkpoint", model]) == 2
    assert main(["outpaint", image, "--left", "-3", "--checkpoint", model]) == 2
    assert main(["inpaint", image, str(files / "model" / "config.json"),
                 "--checkpoint", model]) == 2
