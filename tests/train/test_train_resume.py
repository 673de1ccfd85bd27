"""Exact resume, and runs killed (SIGKILL) in the middle of a checkpoint write."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from train_helpers import REPO, hmar_config, subprocess_env, tokenizer_config

from train.checkpoint import CheckpointManager
from train.hmar import main as train_hmar
from train.tokenizer import main as train_tokenizer


def _ckpt(out: Path, step: int) -> dict:
    return torch.load(out / "checkpoints" / f"ckpt-{step:08d}.pt", weights_only=True)


def _assert_same_tensors(a: object, b: object, where: str = "") -> None:
    """Recursive bitwise equality of tensors inside nested dicts/lists."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")


def _resumed_config(cfg, out: Path):
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(out),
                                                            resume=True))


def test_tokenizer_resume_is_exact(image_root, tmp_path):
    """8 steps straight == 4 steps + checkpoint + fresh objects resuming + 4 steps (bitwise).

    Covers dead-code restarts (steps 1, 4, 7), the discriminator (from step 2) and the EMA.
    """
    cfg = tokenizer_config(image_root, tmp_path / "straight", steps=8, ckpt_interval=4,
                           log_interval=2, batch_size=8, ema_decay=0.9)
    cfg = dataclasses.replace(cfg, restart_interval=3, disc_weight=0.1, disc_start=2,
                              disc_layers=2, disc_channels=8, val_samples=8)
    train_tokenizer(cfg)
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "straight/checkpoints/ckpt-00000004.pt", resumed / "checkpoints")
    result = train_tokenizer(_resumed_config(cfg, resumed))
    assert result.step == 8
    a, b = _ckpt(tmp_path / "straight", 8), _ckpt(resumed, 8)
    for key in ("model", "optimizer", "ema", "extra", "monitor", "rng"):
        _assert_same_tensors(a[key], b[key], key)
    assert a["history"]["losses"] == b["history"]["losses"]


_KILL_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from train.cli import build_hmar_config, load_yaml
from train.hmar import main

marker = Path({marker!r})
saves = []

def hook(written, total):
    if written <= 1 << 18:
        saves.append(total)  # first chunk of a new checkpoint
    if len(saves) == 2 and written < total:
        marker.write_text(str(written))  # the second checkpoint is half written: stall here
        time.sleep(600)

main(build_hmar_config(load_yaml({config!r})), checkpoint_write_hook=hook)
"""


def test_hmar_killed_mid_checkpoint_resumes_exactly(image_root, tokenizer_run, tmp_path):
    """A run SIGKILLed while writing its 2nd checkpoint keeps the 1st loadable, and resuming
    from it ends bitwise equal to an uninterrupted run (joint stage: label drop, masks,
    stochastic depth, EMA, on-the-fly tokens)."""
    cfg = hmar_config(image_root, tmp_path / "straight", tokenizer_run.export_dir,
                      stage="joint", steps=12, ckpt_interval=4, log_interval=2,
                      batch_size=8, ema_decay=0.9,
                      fields={"token_cache_crops": 0, "val_samples": 8})
    train_hmar(cfg)

    killed = tmp_path / "killed"
    config_path = tmp_path / "killed.yaml"
    data = dataclasses.asdict(dataclasses.replace(
        cfg, run=dataclasses.replace(cfg.run, out_dir=str(killed))))
    data["transformer"] = cfg.transformer.to_dict()
    config_path.write_text(json.dumps(data))  # JSON is YAML
    marker = tmp_path / "marker"
    script = _KILL_SCRIPT.format(repo=str(REPO), marker=str(marker), config=str(config_path))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=subprocess_env())
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, "the run ended before its second checkpoint"
            assert time.monotonic() < deadline, "the run never reached its second checkpoint"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    manager = CheckpointManager(killed / "checkpoints")
    assert [p.name for p in manager.paths()] == ["ckpt-00000004.pt"]
    assert list((killed / "checkpoints").glob(".ckpt-*.tmp"))  # the unfinished write
    state, _ = manager.load_latest()
    assert state["step"] == 4

    result = train_hmar(_resumed_config(cfg, killed))
    assert result.step == 12
    assert not list((killed / "checkpoints").glob(".ckpt-*.tmp"))
    a, b = _ckpt(tmp_path / "straight", 12), _ckpt(killed, 12)
    for key in ("model", "optimizer", "ema", "rng"):
        _assert_same_tensors(a[key], b[key], key)


_SAVE_LOOP = """
import sys
sys.path.insert(0, {repo!r})
import torch
from train.checkpoint import CheckpointManager
manager = CheckpointManager({folder!r})
step = 0
while True:
    step += 1
    manager.save({{"step": step, "x": torch.full((400_000,), float(step))}}, step)
"""


def test_random_sigkills_never_leave_an_unloadable_checkpoint(tmp_path):
    folder = tmp_path / "ckpts"
    script = _SAVE_LOOP.format(repo=str(REPO), folder=str(folder))
    rng = random.Random(0)
    last_step = 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                                env=subprocess_env())
        try:
            deadline = time.monotonic() + 120
            while not CheckpointManager(folder).paths():  # wait for the loop to be running
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(rng.random() * 0.5)  # then kill at a random point of the save loop
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        manager = CheckpointManager(folder)
        loaded = manager.load_latest()
        assert loaded is not None
        state, path = loaded
        assert torch.equal(state["x"], torch.full((400_000,), float(state["step"])))
        # a kill between writing a checkpoint and pruning the oldest leaves one extra file
        assert state["step"] >= 1 and len(manager.paths()) <= 3
        last_step = state["step"]
        manager.remove_stale_temporaries()
        for stale in manager.paths():  # restart the loop's numbering from scratch
            stale.unlink()
    assert last_step >= 1
