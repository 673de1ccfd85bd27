"""Files the CLI tests feed to ``python -m hmar_core``: a tiny model, images, hostile inputs."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width × height`` but holds one row (a bomb's header, cheaply)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = zlib.compress(b"\0" * (width + 1))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row)
            + chunk(b"IEND", b""))


def make_inputs(folder: Path) -> Path:
    """A tiny model and input images in ``folder``; returns ``folder``."""
    from hmar_core import Pipeline

    Pipeline.random(seed=0).save_pretrained(folder / "model")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / "img.png")
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 10:30] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    data = (folder / "img.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "bomb14000.png").write_bytes(png_header_only(14000, 14000))
    (folder / "bomb13000.png").write_bytes(png_header_only(13000, 13000))
    (folder / "page.eps").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
                                     "0 0 moveto 8 8 lineto stroke\nshowpage\n")
    (folder / "a_file.txt").write_text("not a folder\n")
    return folder


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m hmar_core ARGS`` in a fresh process (the promise is about stderr and rc)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "hmar_core", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def error_without_blocking(call: Callable[[], object], fifo: Path) -> BaseException | None:
    """Run ``call`` in a thread and return what it raised; fail the test if it blocks on
    ``fifo`` (then unblock it by opening the FIFO's other end, so nothing hangs). Only for
    readers that release the GIL while blocked (Python's ``open``)."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            raised.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)  # a bound on a hang, not a speed assertion: the fixed code never waits
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # EOF for the blocked reader
        thread.join(60)
        pytest.fail(f"reading {fifo.name} blocked on a FIFO")
    return raised[0] if raised else None
