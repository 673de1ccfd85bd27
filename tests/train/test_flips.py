"""Mirrored training images (``run.hflip`` / ``run.hflip_skip``): deterministic per sample, the
official crops untouched, classes whose mirror image is another thing never flipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train.batches import open_datasets
from train.config import RunConfig
from train.data import ImageFolderDataset


def _folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("01_noto_face", "02_noto_flag"):
        (root / name).mkdir(parents=True)
        for index in range(6):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)  # not symmetric
            Image.fromarray(pixels).save(root / name / f"{index}.png")


def test_flips_keep_the_crops_and_mirror_only_the_allowed_classes(tmp_path) -> None:
    _folder(tmp_path)
    plain = ImageFolderDataset(tmp_path, 16, train=True, seed=3)
    flipped = ImageFolderDataset(tmp_path, 16, train=True, seed=3)
    flipped.set_flips(1.0, ["_flag"])
    faces = [i for i, t in enumerate(plain.targets) if t == 0]
    flags = [i for i, t in enumerate(plain.targets) if t == 1]

    for epoch in range(3):
        for index in faces:  # the same crop, mirrored
            expected = plain[(epoch, index)][0].flip(-1)
            assert torch.equal(flipped[(epoch, index)][0], expected)
        for index in flags:  # never mirrored
            assert torch.equal(flipped[(epoch, index)][0], plain[(epoch, index)][0])


def test_half_the_images_flip_and_the_same_ones_every_time(tmp_path) -> None:
    _folder(tmp_path)
    dataset = ImageFolderDataset(tmp_path, 16, train=True, seed=1)
    plain = ImageFolderDataset(tmp_path, 16, train=True, seed=1)
    dataset.set_flips(0.5)
    keys = [(epoch, index) for epoch in range(20) for index in range(len(dataset))]
    mirrored = [not torch.equal(dataset[key][0], plain[key][0]) for key in keys]

    assert 0.35 < np.mean(mirrored) < 0.65
    assert mirrored == [not torch.equal(dataset[key][0], plain[key][0]) for key in keys]
    with pytest.raises(ValueError, match="flip probability"):
        dataset.set_flips(1.5)
    with pytest.raises(ValueError, match="matches no class"):
        dataset.set_flips(0.5, ["_symbol"])


def test_the_run_config_turns_flips_on_for_training_images_only(tmp_path) -> None:
    _folder(tmp_path)
    run = RunConfig(data_path=str(tmp_path), hflip=1.0, hflip_skip=["_fl?g"],
                    val_fraction=0.25)
    splits = open_datasets(run, 16)
    base = splits.train.dataset  # the split's view of the one dataset
    assert base.flip_probability == 1.0 and base.unflipped_classes == {1}
    plain = open_datasets(RunConfig(data_path=str(tmp_path), val_fraction=0.25), 16)
    key = (0, 0)
    assert torch.equal(splits.val[key][0], plain.val[key][0])  # held-out: never flipped
    assert run.hflip_skip == ("_fl?g",)
    with pytest.raises(ValueError, match="hflip must be a probability"):
        RunConfig(data_path="x", hflip=-0.1)
    with pytest.raises(ValueError, match="not one string"):
        RunConfig(data_path="x", hflip_skip="_flag")
