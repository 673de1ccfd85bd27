"""Issue #17 item 6: the CLI never overwrites its inputs, replaces an existing output only with
``--overwrite``, and refuses an output without an image extension before the run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from cli_inputs import make_inputs
from PIL import Image

from hmar_core.cli import main
from hmar_core.cli_outputs import check_image_outputs, variant_paths


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    return make_inputs(tmp_path)


def _inpaint(files: Path, out: str | Path, *extra: str) -> int:
    return main(["inpaint", str(files / "img.png"), str(files / "mask.png"), "--checkpoint",
                 str(files / "model"), "--steps", "0", "--out", str(out), *extra])


def _errors(caplog: pytest.LogCaptureFixture) -> str:
    return " | ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
def test_output_equal_to_an_input_is_refused(files, caplog, spelling):
    original = (files / "img.png").read_bytes()
    out = {"same": files / "img.png", "dotdot": files / "model" / ".." / "img.png",
           "symlink": files / "link.png", "hardlink": files / "hard.png"}[spelling]
    if spelling == "symlink":
        out.symlink_to(files / "img.png")
    if spelling == "hardlink":
        os.link(files / "img.png", out)
    assert _inpaint(files, out, "--overwrite") == 2
    assert "is the input" in _errors(caplog)
    assert (files / "img.png").read_bytes() == original


def test_mask_and_variants_are_inputs_and_outputs_too(files, caplog):
    original = (files / "mask.png").read_bytes()
    assert _inpaint(files, files / "mask.png", "--overwrite") == 2
    assert _inpaint(files, files / "x.png", "--confidence", str(files / "mask.png"),
                    "--overwrite") == 2
    (files / "v_1.png").write_bytes(b"earlier result")
    assert _inpaint(files, files / "v.png", "--variants", "2") == 2
    assert "v_1.png exists; pass --overwrite" in _errors(caplog)
    assert (files / "mask.png").read_bytes() == original
    assert (files / "v_1.png").read_bytes() == b"earlier result"
    assert _inpaint(files, files / "c.png", "--confidence", str(files / "c.png")) == 2
    assert "written twice" in _errors(caplog)


def test_existing_output_needs_overwrite(files, caplog):
    out = files / "result.png"
    out.write_bytes(b"keep me")
    assert _inpaint(files, out) == 2
    assert "exists; pass --overwrite" in _errors(caplog)
    assert out.read_bytes() == b"keep me"
    assert _inpaint(files, out, "--overwrite") == 0
    assert Image.open(out).size == (40, 30)


def test_output_without_image_extension_is_refused_before_the_run(files, caplog):
    """The checkpoint does not exist: a check before the run reports the extension first."""
    assert main(["generate", "--checkpoint", str(files / "missing"),
                 "--out", str(files / "result")]) == 2
    assert "needs an image extension" in _errors(caplog)
    assert main(["edit", str(files / "img.png"), "--class", "1", "--checkpoint",
                 str(files / "missing"), "--out", str(files / "result")]) == 2
    assert _errors(caplog).count("needs an image extension") == 2
    assert not (files / "result").exists()


def test_preview_folder_rules(files, caplog):
    previews = files / "previews"
    assert _inpaint(files, files / "a.png", "--previews", str(previews)) == 0
    assert any(previews.iterdir())
    assert _inpaint(files, files / "b.png", "--previews", str(previews)) == 2
    assert "holds earlier previews" in _errors(caplog)
    assert _inpaint(files, files / "c.png", "--previews", str(files / "img.png")) == 2


def test_generate_and_convert_refuse_existing_outputs(files, caplog):
    grid = files / "grid.png"
    grid.write_bytes(b"old grid")
    assert main(["generate", "--checkpoint", str(files / "model"), "--out", str(grid)]) == 2
    assert grid.read_bytes() == b"old grid"
    model = files / "model"
    assert main(["convert", "--vae", "v.pth", "--hmar", "h.pth", "--out", str(model)]) == 2
    assert "already holds a model; pass --overwrite" in _errors(caplog)
    weights = str(model / "tokenizer.safetensors")
    assert main(["convert", "--vae", weights, "--hmar", "h.pth", "--out", str(model),
                 "--overwrite"]) == 2
    assert "would overwrite the input" in _errors(caplog)
    assert main(["convert", "--vae", "v.pth", "--hmar", "h.pth", "--out",
                 str(files / "img.png")]) == 2
    assert "is not a folder" in _errors(caplog)


def test_output_parent_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        check_image_outputs([("--out", tmp_path / "file" / "out.png")], [], False)
    assert variant_paths("a/out.png", 2) == [Path("a/out_0.png"), Path("a/out_1.png")]


@pytest.mark.parametrize("variants", ["0", "1000000000"])
def test_variants_are_bounded_before_outputs_are_listed(files, caplog, variants):
    assert _inpaint(files, files / "v.png", "--variants", variants) == 2
    assert "--variants must be in [1, 64]" in _errors(caplog)
