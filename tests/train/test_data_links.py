"""ImageFolder scans through symbolic links and restricted formats (issue 17, items 11, 13, 15)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.batches import open_datasets
from train.config import RunConfig
from train.data import ImageFolderDataset


def _images(folder: Path, count: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(count):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{start + i:03d}.png")


def _dataset(root: Path) -> ImageFolderDataset:
    return ImageFolderDataset(root, 16, train=False)


def test_a_self_link_does_not_multiply_samples(tmp_path):
    _images(tmp_path / "a", 3)
    _images(tmp_path / "b", 2)
    os.symlink(".", tmp_path / "a" / "again")
    dataset = _dataset(tmp_path)
    assert len(dataset) == 5 and dataset.targets == [0, 0, 0, 1, 1]
    assert all("again" not in path.parts for path, _ in dataset.samples)


@pytest.mark.timeout(120)
def test_two_self_links_and_a_loop_of_links_do_not_hang(tmp_path):
    _images(tmp_path / "a", 3)
    os.symlink(".", tmp_path / "a" / "one")
    os.symlink(".", tmp_path / "a" / "two")
    os.symlink(tmp_path / "a" / "y", tmp_path / "a" / "x")  # x -> y -> x: a loop of links
    os.symlink(tmp_path / "a" / "x", tmp_path / "a" / "y")
    assert len(_dataset(tmp_path)) == 3


def test_a_link_to_the_root_does_not_relabel_other_classes(tmp_path):
    _images(tmp_path / "a", 3)
    _images(tmp_path / "b", 2, start=10)
    os.symlink("..", tmp_path / "a" / "up")  # would file b/* (and a/*) under class a
    os.symlink(tmp_path / "b", tmp_path / "a" / "sibling")  # would file b/* under class a
    dataset = _dataset(tmp_path)
    assert dataset.class_counts() == [3, 2]
    assert all(path.parent.name == dataset.classes[label] for path, label in dataset.samples)


def test_a_linked_folder_outside_the_root_is_still_followed(tmp_path):
    _images(tmp_path / "elsewhere" / "cats", 4)
    _images(tmp_path / "root" / "dogs", 2)
    os.symlink(tmp_path / "elsewhere" / "cats", tmp_path / "root" / "cats")
    _images(tmp_path / "elsewhere" / "more", 1, start=20)
    os.symlink(tmp_path / "elsewhere" / "more", tmp_path / "root" / "dogs" / "more")
    assert _dataset(tmp_path / "root").class_counts() == [4, 3]


def test_formats_outside_read_formats_are_skipped_whatever_their_name(tmp_path):
    _images(tmp_path / "a", 2)
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / "a" / "ppm-inside.png", format="PPM")
    dataset = _dataset(tmp_path)
    assert len(dataset) == 2
    assert [path.name for path, _ in dataset.skipped] == ["ppm-inside.png"]


def test_a_file_as_data_path_says_it_is_a_file(tmp_path):
    _images(tmp_path / "a", 1)
    image = tmp_path / "a" / "000.png"
    with pytest.raises(ValueError, match=r"is a file, not a folder"):
        open_datasets(RunConfig(data_path=str(image)), 16)
    with pytest.raises(NotADirectoryError, match=r"is a file, not a folder"):
        ImageFolderDataset(image, 16, train=True)


def test_a_broken_npz_is_one_clear_error(tmp_path):
    broken = tmp_path / "data.npz"
    broken.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="not a dataset .npz"):
        open_datasets(RunConfig(data_path=str(broken)), 16)
