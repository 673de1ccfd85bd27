"""Issue #17 items 10 and 15: the CLI reads images only through ``images.open_image``: one of
READ_FORMATS, size checked from the header before any pixel is decoded, folders and FIFOs
refused; every refusal is a one-line ``ValueError``."""

from __future__ import annotations

import ast
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from cli_inputs import error_without_blocking, make_inputs, png_header_only
from PIL import Image

from hmar_core.cli import main
from hmar_core.images import open_image

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
CLI_FILES = sorted((Path(__file__).resolve().parents[1] / "hmar_core").glob("cli*.py"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_inputs(tmp_path_factory.mktemp("cli_images"))


def test_header_is_checked_before_decoding(tmp_path):
    """13000² is below PIL's own limit: only our header check stops it (no 1.7 GB decode)."""
    (tmp_path / "big.png").write_bytes(png_header_only(13000, 13000))
    with pytest.raises(ValueError, match=r"13000x13000 = 161.2 MP, above the 64 MP limit"):
        open_image(tmp_path / "big.png")


@pytest.mark.parametrize(
    ("name", "message"),
    [("bomb14000.png", "186.9 MP, above the 64 MP limit"),
     ("bomb13000.png", "13000x13000"),
     ("truncated.png", "truncated"),
     ("page.eps", "not a supported image file"),
     ("a_file.txt", "not a supported image file"),
     ("model", "is a folder"),
     ("missing.png", "No such file")],
)
def test_bad_image_files_are_one_line_value_errors(files, name, message):
    with pytest.raises(ValueError, match=message) as info:
        open_image(files / name)
    assert "\n" not in str(info.value)


def test_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    error = error_without_blocking(lambda: open_image(tmp_path / "pipe.png"),
                                   tmp_path / "pipe.png")
    assert isinstance(error, ValueError) and "not a regular file" in str(error), error


def test_supported_files_are_fully_loaded(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    for name in ("a.png", "a.bmp", "a.tiff", "a.webp"):
        Image.fromarray(pixels).save(tmp_path / name, **({"lossless": True}
                                                         if name.endswith("webp") else {}))
        image = open_image(tmp_path / name)
        (tmp_path / name).unlink()  # the pixels were read: the file is no longer needed
        assert np.array_equal(np.asarray(image.convert("RGB")), pixels)


def test_cli_refuses_eps_and_bombs_cleanly(files, caplog):
    for image in ("page.eps", "bomb13000.png"):
        assert main(["edit", str(files / image), "--class", "1", "--checkpoint",
                     str(files / "model"), "--out", str(files / "o.png")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "not a supported image file" in errors[0] and "13000x13000" in errors[1]


def test_cli_modules_never_call_image_open_directly():
    """Only images.open_image opens files (restricted to READ_FORMATS)."""
    for path in CLI_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert not (node.func.attr == "open" and isinstance(node.func.value, ast.Name)
                            and node.func.value.id == "Image"), f"{path.name}:{node.lineno}"
