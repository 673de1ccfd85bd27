"""Files the CLI tests feed to ``python -m hmar_core``: a tiny model, images, hostile inputs."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
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
