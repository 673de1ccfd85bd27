"""Issue #17 item 13 (and 9, 10): every CLI error is one line on stderr with a non-zero exit,
never a traceback; ``--debug`` shows the traceback. Run in real processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_inputs import make_inputs, run_cli


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_inputs(tmp_path_factory.mktemp("cli_errors"))
    nested = folder / "nested"
    nested.mkdir()
    (nested / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    return folder


CASES = {
    "bomb above PIL's 179 MP limit": (
        ["inpaint", "bomb14000.png", "mask.png", "--out", "o.png"], r"186.9 MP, above the 64 MP"),
    "bomb below PIL's limit": (
        ["inpaint", "bomb13000.png", "mask.png", "--out", "o.png"], "13000x13000 = 161.2 MP"),
    "truncated image": (["inpaint", "truncated.png", "mask.png", "--out", "o.png"], "truncated"),
    "folder as image": (["outpaint", ".", "--right", "8", "--out", "o.png"], "is a folder"),
    "folder as mask": (["inpaint", "img.png", "model", "--out", "o.png"],
                       "the mask model is a folder"),
    "--previews is a file": (["inpaint", "img.png", "mask.png", "--out", "o.png",
                              "--previews", "a_file.txt"], "--previews a_file.txt is not a folder"),
    "nested config.json": (["generate", "--checkpoint", "nested", "--out", "g.png"],
                           "nested too deeply"),
    "--columns -1": (["generate", "--num", "2", "--columns", "-1", "--out", "g.png"],
                     "--columns must be at least 1"),
    "argparse error": (["generate", "--columns", "many"], "invalid int value"),
}


@pytest.mark.parametrize("case", CASES)
def test_error_is_one_line_without_traceback(files, case):
    argv, message = CASES[case]
    if argv[0] != "generate" or "--checkpoint" not in argv:
        argv = [*argv, "--checkpoint", "model"]
    result = run_cli(*argv, cwd=files)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in lines[0]
    assert not (files / "o.png").exists() and not (files / "g.png").exists()


def test_debug_shows_the_traceback(files):
    result = run_cli("--debug", "inpaint", "truncated.png", "mask.png", "--checkpoint", "model",
                     "--out", "o.png", cwd=files)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "truncated" in result.stderr
