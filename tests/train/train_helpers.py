"""Helpers of the trainer tests: a tiny real image set and small run configurations.

The image set has 4 classes × (60 train + 8 val) images at 16×16 (the ``tiny`` tokenizer's
size). When the emoji demo data has been built (``data/emoji64``, ignored by git), real emoji
are taken from it and downsampled with Lanczos; otherwise structured images (discs, squares,
stripes, rings of random colours and sizes) are rendered at 64 px and downsampled the same way.
``IMAGE_SOURCE`` says which.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from hmar_core.config import TokenizerConfig, TransformerConfig
from train.config import HMARTrainConfig, OptimConfig, RunConfig, TokenizerTrainConfig

REPO = Path(__file__).resolve().parents[2]
EMOJI = REPO / "data" / "emoji64"
SIZE = 16
TRAIN_PER_CLASS, VAL_PER_CLASS = 60, 8
IMAGE_SOURCE = "emoji64" if (EMOJI / "train").is_dir() else "synthetic"
#: The ``tiny`` preset (16 px, 4 scales, 64 codes of 8 channels) at half width, for speed.
TEST_TOKENIZER = dataclasses.replace(TokenizerConfig.from_name("tiny"), channels=16,
                                     norm_groups=8)


def _emoji_classes() -> list[str]:
    eligible = []
    for folder in sorted((EMOJI / "train").iterdir()):
        val = EMOJI / "val" / folder.name
        if (len(list(folder.glob("*.png"))) >= TRAIN_PER_CLASS
                and val.is_dir() and len(list(val.glob("*.png"))) >= VAL_PER_CLASS):
            eligible.append(folder.name)
    n = len(eligible)
    return [eligible[i * n // 4] for i in range(4)]


def _write_emoji(root: Path) -> list[dict]:
    titles = {}
    labels = EMOJI / "labels.json"
    if labels.is_file():
        titles = {c["dir"]: c for c in json.loads(labels.read_text())["classes"]}
    classes = _emoji_classes()
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for name in classes:
            out = root / split / name
            out.mkdir(parents=True)
            for path in sorted((EMOJI / split / name).glob("*.png"))[:count]:
                with Image.open(path) as image:
                    small = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
                small.save(out / path.name)
    return [{"dir": c, "name": c, "title": titles.get(c, {}).get("title", c)} for c in classes]


def _shape(kind: str, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    color = tuple(int(c) for c in rng.integers(0, 256, 3))
    cx, cy, r = (int(v) for v in (rng.integers(22, 42), rng.integers(22, 42), rng.integers(12, 22)))
    if kind == "disc":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif kind == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=color, width=6)
    else:
        for y in range(0, 64, 8):
            shade = tuple(int(c * (0.4 + 0.6 * y / 64)) for c in color)
            draw.rectangle((0, y, 63, y + 3), fill=shade)
    return image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def _write_synthetic(root: Path) -> list[dict]:
    kinds = ["disc", "ring", "square", "stripes"]
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for kind in kinds:
            out = root / split / kind
            out.mkdir(parents=True)
            for i in range(count):
                _shape(kind, rng).save(out / f"{i:03d}.png")
    return [{"dir": k, "name": k, "title": k.title()} for k in kinds]


def build_image_root(root: Path) -> Path:
    """``root/{train,val}/<class>/*.png`` at 16×16 plus a ``labels.json`` with titles."""
    classes = _write_emoji(root) if IMAGE_SOURCE == "emoji64" else _write_synthetic(root)
    (root / "labels.json").write_text(json.dumps({"classes": classes}))
    return root


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def subprocess_env() -> dict[str, str]:
    """Environment of test subprocesses: one OpenMP thread, the repository importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def tokenizer_config(data: Path, out: Path, **run: object) -> TokenizerTrainConfig:
    """A small tokenizer run on the test images (``run`` overrides RunConfig fields)."""
    settings = {"data_path": str(data), "out_dir": str(out), "batch_size": 32, "steps": 150,
                "log_interval": 50, "ckpt_interval": 0, "progress_bar": False,
                "tensorboard": False, **run}
    return TokenizerTrainConfig(run=RunConfig(**settings), tokenizer=TEST_TOKENIZER, val_samples=32,
                                optim=OptimConfig(lr=2e-3, weight_decay=0.0,
                                                  warmup_fraction=0.02, schedule="cosine",
                                                  end_ratio=0.05))


def hmar_config(data: Path, out: Path, tokenizer: Path, stage: str = "stage1",
                init_from: Path | None = None, transformer: dict | None = None,
                fields: dict | None = None, **run: object) -> HMARTrainConfig:
    """A small HMAR run (``tiny`` transformer, 4 classes) on the test images.

    ``transformer`` overrides model fields, ``fields`` HMARTrainConfig fields, ``run`` RunConfig.
    """
    settings = {"data_path": str(data), "out_dir": str(out), "batch_size": 32, "steps": 150,
                "log_interval": 50, "ckpt_interval": 0, "progress_bar": False,
                "tensorboard": False, **run}
    model = TransformerConfig.from_name("tiny", **{"num_classes": 4, **(transformer or {})})
    defaults = {"optim": OptimConfig(lr=2e-3), "token_cache_crops": 2, "val_samples": 32,
                "preview_classes": 4}
    return HMARTrainConfig(
        run=RunConfig(**settings), tokenizer_path=str(tokenizer), transformer=model,
        stage=stage, init_from=None if init_from is None else str(init_from),
        **{**defaults, **(fields or {})})
