"""Finer classes for the emoji set: each style's semantic category split by Unicode subcategory.

The 51 classes of :mod:`train.data.emoji_labels` are broad: ``noto/object`` holds 205 training
images of some twenty kinds of thing, ``noto/person`` 1,829. A model conditioned on them must
pick the kind of thing itself at the coarse scales. This module relabels a built dataset
(``python -m train.data emoji --npz``) so that every Unicode subcategory with at least
``min_images`` training images of a class becomes a class of its own, named
``<class>/<subcategory>`` (``noto/object/office``); the rest of the class's images form
``<class>/other``. The images, splits and order stay; only the labels change.

``python -m train.data fine --data data/emoji64 --out data/emoji64-fine`` writes
``data/emoji64-fine/emoji64-fine.npz`` (the builder's keys, the new ``labels``,
``class_names``, ``class_dirs``, plus ``class_parents``: the 51-class id of each new class)
and a ``labels.json`` whose class names are the new names, so that a model trained on it
carries them and every fine class can be mapped back to its 51-class parent by name
(:func:`parent_names`).

Held-out images of a subcategory that has no class of its own go to ``<class>/other``, or,
when the class has no ``other``, to its largest fine class (they only enter the held-out loss);
a class with held-out images only keeps one fine class, ``<class>/other``, empty in training
(like the builder's empty classes: ``run.allow_empty_classes``).
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["OTHER", "FineClasses", "fine_classes", "parent_names", "write_fine_dataset"]

logger = logging.getLogger(__name__)

#: Name of the fine class that holds a class's images of small subcategories.
OTHER = "other"


@dataclass(frozen=True)
class FineClasses:
    """The finer labelling of a dataset.

    Attributes:
        names: ``<coarse name>/<subcategory>`` or ``<coarse name>/other`` per fine class.
        parents: the coarse class id of each fine class.
        labels: the fine class of every image, int64 ``(N,)``.
    """

    names: list[str]
    parents: list[int]
    labels: np.ndarray


def fine_classes(coarse_labels: np.ndarray, subcategories: Sequence[str], train: np.ndarray,
                 coarse_names: Sequence[str], min_images: int) -> FineClasses:
    """Split every coarse class with training images by subcategory.

    Args:
        coarse_labels: coarse class id per image, ``(N,)``.
        subcategories: Unicode subcategory per image.
        train: True for the training images, ``(N,)`` bool (only they count).
        coarse_names: name per coarse class id.
        min_images: training images a subcategory needs to become a class of its own (≥ 1).

    Raises:
        ValueError: mismatched lengths, ``min_images`` < 1, or a label out of range.
    """
    coarse_labels = np.asarray(coarse_labels, dtype=np.int64)
    train = np.asarray(train, dtype=bool)
    if not len(coarse_labels) == len(subcategories) == len(train):
        raise ValueError(f"{len(coarse_labels)} labels, {len(subcategories)} subcategories and "
                         f"{len(train)} split flags: one of each per image")
    if min_images < 1:
        raise ValueError(f"min_images must be >= 1, got {min_images}")
    if len(coarse_labels) and (coarse_labels.min() < 0
                               or coarse_labels.max() >= len(coarse_names)):
        raise ValueError(f"coarse labels must be in [0, {len(coarse_names) - 1}]")
    counts = Counter((int(c), s) for c, s, t in zip(coarse_labels, subcategories, train) if t)
    held_only = set(coarse_labels[~train].tolist()) - set(coarse_labels[train].tolist())
    names: list[str] = []
    parents: list[int] = []
    index: dict[tuple[int, str], int] = {}
    largest: dict[int, int] = {}  # coarse id -> its largest named fine class

    def add(coarse: int, sub: str) -> int:
        index[(coarse, sub)] = len(names)
        names.append(f"{coarse_names[coarse]}/{sub}")
        parents.append(coarse)
        return index[(coarse, sub)]

    for coarse in range(len(coarse_names)):
        own = sorted(((n, s) for (c, s), n in counts.items() if c == coarse),
                     key=lambda item: (-item[0], item[1]))  # largest first
        if not own:
            if coarse in held_only:  # held-out images only: one class, empty in training
                add(coarse, OTHER)
            continue  # no images at all: no fine class
        for n, sub in own:
            if n >= min_images:
                largest.setdefault(coarse, add(coarse, sub))
        if any(n < min_images for n, _ in own):
            add(coarse, OTHER)
    labels = np.empty(len(coarse_labels), dtype=np.int64)
    for i, (coarse, sub) in enumerate(zip(coarse_labels.tolist(), subcategories)):
        labels[i] = index.get((coarse, sub), index.get((coarse, OTHER), largest.get(coarse)))
    return FineClasses(names, parents, labels)


def parent_names(fine_names: Sequence[str]) -> list[str]:
    """The coarse class name of every fine class name (``noto/object/office`` →
    ``noto/object``)."""
    parents = []
    for name in fine_names:
        if name.count("/") < 2:
            raise ValueError(f"{name!r} is not a fine class name (<style>/<category>/<sub>)")
        parents.append(name.rsplit("/", 1)[0])
    return parents


def write_fine_dataset(data: str | Path, out: str | Path, min_images: int = 20) -> Path:
    """Relabel the dataset folder ``data`` (its ``<name>.npz`` and ``images.csv``) into
    ``out/<out name>.npz`` with its ``labels.json``; returns the ``.npz`` path."""
    data, out = Path(data), Path(out)
    source = data / f"{data.name}.npz"
    with np.load(source, allow_pickle=False) as arrays:
        content = {key: arrays[key] for key in arrays.files}
    with open(data / "images.csv", newline="", encoding="utf-8") as handle:
        subcategory = {row["path"]: row["unicode_subcategory"] for row in csv.DictReader(handle)}
    paths = [str(p) for p in content["paths"]]
    missing = [p for p in paths if p not in subcategory]
    if missing:
        raise ValueError(f"{data / 'images.csv'} lacks {len(missing)} images of {source}, "
                         f"e.g. {missing[0]}")
    train_split = [str(s) for s in content["split_names"]].index("train")
    fine = fine_classes(content["labels"], [subcategory[p] for p in paths],
                        content["splits"] == train_split,
                        [str(n) for n in content["class_names"]], min_images)
    dirs = [f"{i:03d}_{name.replace('/', '_')}" for i, name in enumerate(fine.names)]
    content.update(labels=fine.labels.astype(np.int16), class_names=np.array(fine.names),
                   class_dirs=np.array(dirs), class_parents=np.array(fine.parents, np.int16))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{out.name}.npz"
    np.savez_compressed(path, **content)
    train_counts = np.bincount(fine.labels[content["splits"] == train_split],
                               minlength=len(fine.names))
    classes = [{"id": i, "name": name, "dir": dirs[i], "parent": fine.parents[i],
                "counts": {"train": int(train_counts[i])}}
               for i, name in enumerate(fine.names)]
    (out / "labels.json").write_text(json.dumps(
        {"dataset": f"{data.name} with classes split by Unicode subcategory",
         "min_images": min_images, "num_classes": len(fine.names), "classes": classes},
        indent=1) + "\n")
    logger.info("wrote %s: %d classes from %d (subcategories with >= %d training images)",
                path, len(fine.names), len(set(fine.parents)), min_images)
    return path
