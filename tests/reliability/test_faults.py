"""Faults: a training run SIGKILLed three times, and a full disk during checkpointing.

The run is a tiny CPU tokenizer training (``train_worker.py``, a subprocess; one torch thread so
that it is bitwise reproducible) of ``STEPS`` steps with a checkpoint every ``INTERVAL`` steps.

* **Killed three times**: at a random moment after its first checkpoint, in the middle of a
  checkpoint write (through the trainer's write hook), and at a random moment again; resumed
  with ``--resume`` after each kill. Every time, the checkpoints on disk all load (no
  corruption, at most two kept), the next run resumes from the newest one, at most one interval
  of steps is lost, and the finished run equals an uninterrupted run bit for bit (model,
  optimizer and RNG state of the last checkpoint).
* **Full disk**: ``RLIMIT_FSIZE`` below a checkpoint's size (``SIGXFSZ`` ignored, so writes fail
  with ``EFBIG`` as on a full disk) and, in-process, a checkpoint temp file that points at
  ``/dev/full`` (a real ``ENOSPC``): the write fails with an error that names the checkpoint,
  the previous checkpoint stays intact and loadable, and no temporary file is left behind.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from reliability_support import FULL, REPO, record, sized

from train.checkpoint import CheckpointManager

WORKER = Path(__file__).with_name("train_worker.py")
STEPS = sized(60, 200)
INTERVAL = 10
STEP_LINE = re.compile(r"train\.logging: step (\d+):")
RESUMED = re.compile(r"resumed from \S+ckpt-(\d+)\.pt at step (\d+)")
RUN_TIMEOUT = 300


def build_images(root: Path) -> Path:
    """2 classes × (24 train + 4 held-out) 16×16 pictures (discs and squares)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("val", 4)):
        for kind in ("disc", "square"):
            folder = root / split / kind
            folder.mkdir(parents=True)
            for index in range(count):
                image = Image.new("RGB", (16, 16), (255, 255, 255))
                draw = ImageDraw.Draw(image)
                color = tuple(int(c) for c in rng.integers(0, 256, 3))
                radius = int(rng.integers(3, 7))
                x, y = (int(v) for v in rng.integers(5, 11, 2))
                shape = draw.ellipse if kind == "disc" else draw.rectangle
                shape((x - radius, y - radius, x + radius, y + radius), fill=color)
                image.save(folder / f"{index:03d}.png")
    return root


def start_worker(data: Path, out: Path, log: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(WORKER), str(data), str(out), "--steps", str(STEPS),
               "--interval", str(INTERVAL), *extra]
    with open(log, "ab") as handle:
        return subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=handle)


def run_worker(data: Path, out: Path, log: Path, *extra: str) -> int:
    process = start_worker(data, out, log, *extra)
    try:
        return process.wait(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def steps_done(log_text: str) -> int:
    steps = [int(m) for m in STEP_LINE.findall(log_text)]
    return max(steps, default=0)


def _newest_step(folder: Path) -> int:
    paths = CheckpointManager(folder).paths()
    return int(paths[0].stem.split("-")[1]) if paths else 0


def check_checkpoints(folder: Path) -> int:
    """Every checkpoint loads and is what its name says; returns the newest step."""
    manager = CheckpointManager(folder)
    paths = manager.paths()
    assert 1 <= len(paths) <= 2, [p.name for p in paths]
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=True)  # not corrupt
        step = int(path.stem.split("-")[1])
        assert state["step"] == step and step % INTERVAL == 0
        assert state["kind"] == "tokenizer" and state["model"]
    return int(paths[0].stem.split("-")[1])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def reference(images: Path, tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted run, started at once in the background; call it for its folder."""
    out = tmp_path_factory.mktemp("reference")
    log = out.parent / f"{out.name}-worker.log"  # beside the run: its folder starts empty
    process = start_worker(images, out, log)

    def finished() -> Path:
        code = process.wait(timeout=RUN_TIMEOUT)
        assert code == 0, log.read_text()[-3000:]
        return out

    yield finished
    if process.poll() is None:
        process.kill()
        process.wait()


def _wait_for(predicate, process: subprocess.Popen, what: str, timeout: float = RUN_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_three_sigkills_resume_from_the_last_good_checkpoint(images, reference, tmp_path):
    out, log = tmp_path / "killed", tmp_path / "worker.log"
    rng = random.Random(None if FULL else 9)
    kills = []
    for kind in ("random", "in-write", "random"):
        before = log.read_text() if log.exists() else ""
        newest = check_checkpoints(out / "checkpoints") if kills else 0
        extra = ["--resume"] + (["--die-in-write", "2"] if kind == "in-write" else [])
        process = start_worker(images, out, log, *extra)
        try:
            if kind == "random":
                # after a new checkpoint of this run (so there is progress to lose), then a
                # random moment within about two intervals
                _wait_for(lambda floor=newest: _newest_step(out / "checkpoints") > floor,
                          process, "a new checkpoint")
                time.sleep(rng.uniform(0.0, 2.0))
                assert process.poll() is None, "the run finished before the random kill"
                os.kill(process.pid, signal.SIGKILL)
            code = process.wait(timeout=RUN_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        text = log.read_text()[len(before):]
        assert code == -signal.SIGKILL, text[-3000:]
        if kind == "in-write":
            assert "dying in checkpoint write 2" in text
            assert list((out / "checkpoints").glob(".ckpt-*.tmp")), "no unfinished write"
        kept = check_checkpoints(out / "checkpoints")  # no corruption after the kill
        done = steps_done(text)
        resumed = RESUMED.search(text)
        if kills:  # this run resumed from the newest checkpoint left by the previous kill
            assert resumed and int(resumed.group(2)) == kills[-1]["kept"], text[:3000]
        lost = done - kept
        assert 0 <= lost <= INTERVAL, f"{kind} kill at step {done} kept step {kept}"
        kills.append({"kind": kind, "steps_done": done, "kept": kept, "lost": lost})

    before = log.read_text()
    assert run_worker(images, out, log, "--resume") == 0, log.read_text()[-3000:]
    text = log.read_text()[len(before):]
    assert int(RESUMED.search(text).group(2)) == kills[-1]["kept"]
    assert f"finished at step {STEPS}" in text
    assert not list((out / "checkpoints").glob(".ckpt-*.tmp"))  # stale temporaries removed
    name = f"ckpt-{STEPS:08d}.pt"
    ours = torch.load(out / "checkpoints" / name, weights_only=True)
    straight = torch.load(reference() / "checkpoints" / name, weights_only=True)
    for key in ("model", "optimizer", "rng"):
        _assert_same(ours[key], straight[key], key)
    record("faults", sigkills=kills, steps=STEPS, interval=INTERVAL,
           max_steps_lost=max(k["lost"] for k in kills), resumed_equals_uninterrupted=True)


def _assert_same(a: object, b: object, where: str) -> None:
    """Bitwise equality of nested tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def test_file_size_limit_during_checkpointing_keeps_the_previous_one(images, reference,
                                                                     tmp_path):
    """EFBIG (RLIMIT_FSIZE) while writing the last checkpoint: clear error, previous intact."""
    last_good = f"ckpt-{STEPS - INTERVAL:08d}.pt"
    source = reference() / "checkpoints" / last_good
    out, log = tmp_path / "full", tmp_path / "worker.log"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(source, out / "checkpoints" / last_good)
    limit = source.stat().st_size // 2  # a checkpoint cannot fit; the log lines can
    code = run_worker(images, out, log, "--resume", "--log-interval", "1000",
                      "--fsize-limit", str(limit))
    text = log.read_text()
    assert code not in (0, -signal.SIGXFSZ, -signal.SIGKILL), text[-3000:]
    assert "Traceback" in text and "File too large" in text, text[-3000:]
    assert f"ckpt-{STEPS:08d}.pt" in text, f"the error does not name the checkpoint: {text[-1500:]}"
    assert [p.name for p in CheckpointManager(out / "checkpoints").paths()] == [last_good]
    assert (out / "checkpoints" / last_good).read_bytes() == source.read_bytes()
    assert not list((out / "checkpoints").glob(".ckpt-*"))  # no temporary left behind
    record("faults", efbig_error=_error_line(text))


def _error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if "Error" in line and "Traceback" not in line]
    return lines[-1].strip()[:300] if lines else ""


def test_disk_full_during_checkpointing_keeps_the_previous_one(tmp_path):
    """ENOSPC for real: the temporary file of the 2nd checkpoint is a link to /dev/full."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    manager = CheckpointManager(tmp_path / "checkpoints")
    first = manager.save({"step": 1, "weights": torch.arange(1000.0)}, 1)
    saved = first.read_bytes()
    temporary = manager.folder / f".ckpt-00000002.pt.{os.getpid()}.tmp"  # atomic_save's name
    temporary.symlink_to("/dev/full")
    with pytest.raises(OSError) as info:
        manager.save({"step": 2, "weights": torch.zeros(300_000)}, 2)
    assert info.value.errno == errno.ENOSPC
    assert "ckpt-00000002.pt" in str(info.value), str(info.value)
    assert [p.name for p in manager.paths()] == ["ckpt-00000001.pt"]
    assert first.read_bytes() == saved
    assert not temporary.exists() and not temporary.is_symlink()
    state, path = manager.load_latest()
    assert path == first and state["step"] == 1
    record("faults", enospc_error=str(info.value)[:300])
