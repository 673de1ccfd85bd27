"""Sample grids of the bundled emoji model, one PNG per art style (``assets/samples/``).

Usage::

    python -m benchmarks.sample_grids --model assets/hmar-emoji64 --out assets/samples

Each grid has one column per category of the style (classes without training images, such as
``fluent3d/flag``, are left out) and ``--rows`` rows of samples at the model's default sampler
settings; style ``i`` uses seed ``--seed + i``, so the grids are reproducible.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hmar_core import Pipeline

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("sample_grids")


def style_classes(class_names: Sequence[str], empty: Sequence[int]) -> dict[str, list[int]]:
    """Class ids per style (the part of ``style/category`` before the slash), in id order,
    without the classes listed in ``empty``."""
    out: dict[str, list[int]] = {}
    for class_id, name in enumerate(class_names):
        style, sep, _ = name.partition("/")
        if not sep:
            raise ValueError(f"class name {name!r} is not style/category")
        if class_id not in set(empty):
            out.setdefault(style, []).append(class_id)
    return out


def grid(images: torch.Tensor, columns: int) -> Image.Image:
    """(N, 3, H, W) images in [0, 1], row-major, as one RGB picture of ``columns`` columns."""
    pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    count, _, height, width = pixels.shape
    rows = (count + columns - 1) // columns
    canvas = np.full((rows * height, columns * width, 3), 255, dtype=np.uint8)
    for i, picture in enumerate(pixels):
        r, c = divmod(i, columns)
        canvas[r * height:(r + 1) * height, c * width:(c + 1) * width] = picture.transpose(1, 2, 0)
    return Image.fromarray(canvas)


def write_grids(pipe: Pipeline, empty: Sequence[int], out: Path, rows: int, seed: int
                ) -> list[Path]:
    """One ``<style>.png`` per style into ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (style, classes) in enumerate(style_classes(pipe.class_names, empty).items()):
        result = pipe.generate(classes * rows, seed=seed + index)
        path = out / f"{style}.png"
        grid(result.images, len(classes)).save(path)
        logger.info("wrote %s (%d classes x %d samples)", path, len(classes), rows)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "assets" / "hmar-emoji64")
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "samples")
    parser.add_argument("--rows", type=int, default=2, help="samples per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.rows < 1:
        parser.error("--rows must be >= 1")
    config = json.loads((args.model / "config.json").read_text())
    pipe = Pipeline.from_pretrained(args.model)
    write_grids(pipe, config.get("empty_classes", []), args.out, args.rows, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
