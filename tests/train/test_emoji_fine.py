"""Finer emoji classes (:mod:`train.data.emoji_fine`, issue 16): which subcategories become
classes, where the rest and the held-out images go, and the relabelled dataset on disk."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from train.data import NpzImageDataset
from train.data.__main__ import main as data_main
from train.data.emoji_fine import OTHER, fine_classes, parent_names

COARSE = ["s/face", "s/object", "t/face"]


def test_large_subcategories_become_classes_and_the_rest_is_other():
    # s/face: "smile" 3 train images, "sad" 1 -> smile + other; s/object: only "pen" 2 -> pen;
    # t/face: no images -> no class
    labels = [0, 0, 0, 0, 1, 1, 0, 1, 0]
    subs = ["smile", "smile", "smile", "sad", "pen", "pen", "cry", "cup", "smile"]
    train = [True] * 6 + [False] * 3
    fine = fine_classes(np.array(labels), subs, np.array(train), COARSE, min_images=2)

    assert fine.names == ["s/face/smile", f"s/face/{OTHER}", "s/object/pen"]
    assert fine.parents == [0, 0, 1]
    # held out: "cry" has no class -> s/face/other; "cup" -> s/object has no other, so its
    # largest class; "smile" -> its class
    assert fine.labels.tolist()[:6] == [0, 0, 0, 1, 2, 2]
    assert fine.labels.tolist()[6:9] == [1, 2, 0]
    assert parent_names(fine.names) == ["s/face", "s/face", "s/object"]


def test_a_class_with_held_out_images_only_keeps_one_empty_fine_class():
    fine = fine_classes(np.array([0, 2, 2]), ["a", "b", "c"], np.array([True, False, False]),
                        COARSE, 1)
    assert fine.names == ["s/face/a", f"t/face/{OTHER}"] and fine.parents == [0, 2]
    assert fine.labels.tolist() == [0, 1, 1]


def test_classes_are_ordered_largest_first_within_their_parent():
    labels = np.zeros(6, dtype=np.int64)
    subs = ["a", "b", "b", "c", "c", "c"]
    fine = fine_classes(labels, subs, np.ones(6, dtype=bool), COARSE, min_images=1)
    assert fine.names == ["s/face/c", "s/face/b", "s/face/a"]
    assert fine.labels.tolist() == [2, 1, 1, 0, 0, 0]


def test_refusals():
    ones = np.ones(2, dtype=bool)
    with pytest.raises(ValueError, match="one of each per image"):
        fine_classes(np.zeros(2, np.int64), ["a"], ones, COARSE, 1)
    with pytest.raises(ValueError, match="min_images"):
        fine_classes(np.zeros(2, np.int64), ["a", "a"], ones, COARSE, 0)
    with pytest.raises(ValueError, match="coarse labels"):
        fine_classes(np.array([0, 3]), ["a", "a"], ones, COARSE, 1)
    with pytest.raises(ValueError, match="not a fine class name"):
        parent_names(["s/face"])


def _dataset(folder: Path) -> None:
    """A built dataset in the emoji builder's layout: <folder>/<name>.npz and images.csv."""
    rng = np.random.default_rng(0)
    rows = [("train", 0, "smile"), ("train", 0, "smile"), ("train", 0, "sad"),
            ("train", 1, "pen"), ("val", 0, "cry"), ("val", 1, "pen")]
    paths = [f"{split}/{i:02d}.png" for i, (split, _, _) in enumerate(rows)]
    folder.mkdir()
    np.savez_compressed(
        folder / f"{folder.name}.npz",
        images=rng.integers(0, 256, (len(rows), 8, 8, 3), dtype=np.uint8),
        labels=np.array([c for _, c, _ in rows], np.int16),
        splits=np.array([0 if s == "train" else 1 for s, _, _ in rows], np.uint8),
        split_names=np.array(["train", "val"]), paths=np.array(paths),
        class_names=np.array(COARSE), class_dirs=np.array(["00_s_face", "01_s_object",
                                                            "02_t_face"]))
    with open(folder / "images.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "unicode_subcategory"])
        writer.writerows([p, sub] for p, (_, _, sub) in zip(paths, rows))


def test_relabelled_dataset_keeps_images_and_order(tmp_path):
    _dataset(tmp_path / "toy")
    assert data_main(["fine", "--data", str(tmp_path / "toy"), "--out",
                      str(tmp_path / "toy-fine"), "--min-images", "2"]) == 0

    before = np.load(tmp_path / "toy" / "toy.npz")
    after = np.load(tmp_path / "toy-fine" / "toy-fine.npz")
    for key in ("images", "splits", "paths"):
        np.testing.assert_array_equal(after[key], before[key])
    # s/object's only subcategory has 1 training image: below 2, so it is s/object/other
    assert after["class_names"].tolist() == ["s/face/smile", "s/face/other", "s/object/other"]
    assert after["labels"].tolist() == [0, 0, 1, 2, 1, 2]
    assert after["class_parents"].tolist() == [0, 0, 1]
    labels = json.loads((tmp_path / "toy-fine" / "labels.json").read_text())
    assert [c["name"] for c in labels["classes"]] == after["class_names"].tolist()
    assert [c["counts"]["train"] for c in labels["classes"]] == [2, 1, 1]
    # the trainer reads it like the builder's .npz
    train = NpzImageDataset(tmp_path / "toy-fine" / "toy-fine.npz", 8, train=True)
    assert train.targets == [0, 0, 1, 2] and len(train.classes) == 3


def test_relabelling_needs_every_image_in_the_csv(tmp_path):
    _dataset(tmp_path / "toy")
    lines = (tmp_path / "toy" / "images.csv").read_text().splitlines()
    (tmp_path / "toy" / "images.csv").write_text("\n".join(lines[:-1]) + "\n")
    assert data_main(["fine", "--data", str(tmp_path / "toy"), "--out",
                      str(tmp_path / "out")]) == 2
