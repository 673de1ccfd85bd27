"""Reusing an output folder and resuming from damaged checkpoints (issue 17, items 7 and 8)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from train_helpers import tokenizer_config

from hmar_core import CheckpointError
from train.checkpoint import CheckpointManager
from train.tokenizer import main as train_tokenizer


def _tiny(image_root: Path, out: Path, **run: object):
    """A tokenizer run of a few steps (seconds on one CPU thread)."""
    settings = {"steps": 4, "batch_size": 8, "ckpt_interval": 2, "log_interval": 2, **run}
    cfg = tokenizer_config(image_root, out, **settings)
    return dataclasses.replace(cfg, val_samples=4, restart_interval=0)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _steps(out: Path) -> list[int]:
    return [int(p.stem.split("-")[1]) for p in CheckpointManager(out / "checkpoints").paths()]


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(image_root, tmp_path):
    out = tmp_path / "run"
    train_tokenizer(_tiny(image_root, out))
    export = (out / "tokenizer" / "tokenizer.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"already holds a run .*--resume.*--overwrite"):
        train_tokenizer(_tiny(image_root, out, seed=1))
    assert (out / "tokenizer" / "tokenizer.safetensors").read_bytes() == export
    assert _steps(out) == [4, 2]


def test_a_folder_with_only_a_log_is_not_a_run(image_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.log").write_text("a run that failed before writing anything\n")
    assert train_tokenizer(_tiny(image_root, out, steps=2)).step == 2


def test_overwrite_replaces_the_earlier_run_and_keeps_the_new_checkpoints(image_root, tmp_path):
    out = tmp_path / "run"
    train_tokenizer(_tiny(image_root, out, steps=6))  # checkpoints 4 and 6
    result = train_tokenizer(_tiny(image_root, out, steps=3, ckpt_interval=1, seed=1,
                                   overwrite=True))
    assert result.step == 3
    assert _steps(out) == [3, 2]  # not 6 and 4 of the earlier run
    state, _ = CheckpointManager(out / "checkpoints").load_latest()
    assert state["config"]["train"]["run"]["seed"] == 1


def test_saving_never_prunes_the_checkpoint_just_written(tmp_path):
    manager = CheckpointManager(tmp_path)
    for step in (90, 100):  # higher numbers of some earlier run
        manager.save({"step": step}, step)
    manager.save({"step": 5}, 5)
    assert [p.name for p in manager.paths()] == ["ckpt-00000100.pt", "ckpt-00000005.pt"]


def test_resume_with_only_unreadable_checkpoints_fails(image_root, tmp_path):
    out = tmp_path / "run"
    train_tokenizer(_tiny(image_root, out))
    for path in CheckpointManager(out / "checkpoints").paths():
        _truncate(path)
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        train_tokenizer(_tiny(image_root, out, resume=True))
    assert len(CheckpointManager(out / "checkpoints").paths()) == 2  # left for inspection


def test_resume_skips_and_sets_aside_a_damaged_newest_checkpoint(image_root, tmp_path):
    out = tmp_path / "run"
    train_tokenizer(_tiny(image_root, out))  # checkpoints 2 and 4
    _truncate(out / "checkpoints" / "ckpt-00000004.pt")
    result = train_tokenizer(_tiny(image_root, out, steps=3, resume=True))
    assert result.step == 3  # resumed from 2, the newest readable one
    manager = CheckpointManager(out / "checkpoints")
    assert _steps(out) == [3, 2]  # the good checkpoint 2 is kept, the damaged 4 not counted
    for path in manager.paths():
        assert torch.load(path, weights_only=True)["step"] in (2, 3)
    assert (out / "checkpoints" / "ckpt-00000004.pt.unreadable").is_file()


def test_resume_in_an_empty_folder_starts_from_step_zero(image_root, tmp_path):
    assert train_tokenizer(_tiny(image_root, tmp_path / "new", steps=2, resume=True)).step == 2
