"""Trainer command lines: bad configuration or data is one line and exit status 2, never a
traceback (issue 17, item 13)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from train_helpers import REPO, subprocess_env

from train.hmar import cli as hmar_cli
from train.tokenizer import cli as tokenizer_cli


def _run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args, "--device", "cpu"], cwd=cwd,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300,
                          check=False)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_an_image_file_as_data_says_it_is_a_file(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "file.png")
    line = _one_error_line(_run("train.tokenizer", "--data", "file.png", "--out", "out",
                                cwd=tmp_path))
    assert "file.png is a file, not a folder" in line and "does not exist" not in line


def test_missing_tokenizer_and_data_are_one_line(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "data" / "a" / "x.png")
    line = _one_error_line(_run("train.hmar", "--data", "data", "--tokenizer", "nothing",
                                "--out", "out", cwd=tmp_path))
    assert "nothing is not a tokenizer folder" in line
    line = _one_error_line(_run("train.hmar", "--data", "missing", "--tokenizer", "nothing",
                                "--out", "out", cwd=tmp_path))
    assert "not a tokenizer folder" in line or "does not exist" in line


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "run.steps=abc"], "run.steps: 'abc' is not a valid value (int)"),
    (["--set", "run.steps"], "--set needs KEY=VALUE"),
    (["--set", "optim=3"], "optim must be a mapping"),
    (["--set", "run.stepz=3"], "unexpected keyword argument 'stepz'"),
    (["--preset", "nope"], "unknown tokenizer preset 'nope'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--config", "missing.yaml"], "config file missing.yaml does not exist"),
    (["--config", "{bad}"], "invalid YAML at line 3"),
    (["--set", "run.resume=true", "--overwrite"], "resume and overwrite exclude each other"),
])
def test_config_errors_are_one_line_and_status_2(args, message, tmp_path, caplog):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("run:\n  steps: [1\n")
    args = [str(bad_yaml) if a == "{bad}" else a for a in args]
    with caplog.at_level(logging.ERROR):
        status = tokenizer_cli(["--data", str(tmp_path), "--out", str(tmp_path / "out"),
                                *args])
    assert status == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert message in errors[0].getMessage() and "\n" not in errors[0].getMessage()


def test_hmar_stage_choice_and_fields_are_checked(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        status = hmar_cli(["--data", str(tmp_path), "--tokenizer", "t", "--set", "stage=x"])
    assert status == 2 and "stage: 'x' is not a valid value" in caplog.text


def test_the_flags_of_the_demo_scripts_still_parse():
    from train.cli import parse_hmar_args, parse_tokenizer_args

    cfg = parse_hmar_args(["--config", str(REPO / "train/configs/emoji64-hmar.yaml"),
                           "--stage", "stage2", "--init-from", "m", "--out", "o",
                           "--steps", "30", "--max-minutes", "2", "--resume"])
    assert cfg.stage == "stage2" and cfg.run.resume and cfg.run.max_minutes == 2
    tok = parse_tokenizer_args(["--config", str(REPO / "train/configs/emoji64-tokenizer.yaml"),
                                "--overwrite", "--batch-size", "16", "--precision", "bf16"])
    assert tok.run.overwrite and tok.run.batch_size == 16 and tok.run.precision == "bf16"


@pytest.mark.parametrize(("entry", "args", "message"), [
    ("export", ["--checkpoint", "{junk}", "--out", "{out}"], "cannot read checkpoint"),
    ("export", ["--checkpoint", "{missing}", "--out", "{out}"], "No such file"),
    ("data", ["emoji", "--out", "{out}", "--size", "0"], "size must be positive"),
])
def test_export_and_data_commands_fail_in_one_line(entry, args, message, tmp_path, caplog):
    from train.data.__main__ import main as data_main
    from train.export import cli as export_cli

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    names = {"{junk}": tmp_path / "junk.pt", "{missing}": tmp_path / "missing.pt",
             "{out}": tmp_path / "out"}
    args = [str(names.get(a, a)) for a in args]
    with caplog.at_level(logging.ERROR):
        status = (export_cli if entry == "export" else data_main)(args)
    assert status == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert message in errors[0].getMessage() and "\n" not in errors[0].getMessage()
