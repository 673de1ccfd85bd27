"""The classes a benchmark scores in, and the model's: the same, or the model's are finer.

The quality and editing benchmarks score in the classes of the evaluation data and its
classifier (the 51 emoji classes). A model trained on finer classes (``python -m train.data
fine``: ``noto/object/office``, ``noto/object/other``, ...) is asked for a data class by
drawing one of its children, in proportion to how many training images each child has (so a
generated set has the data's mix of subcategories inside every class), and what it makes is
scored in the parent class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from train.data.emoji_fine import parent_names

__all__ = ["ClassMap"]

logger = logging.getLogger(__name__)


def _children_of(model_names: Sequence[str], index: dict[str, int]) -> bool:
    """Whether every model class is ``<data class>/<subclass>``."""
    try:
        return all(parent in index for parent in parent_names(model_names))
    except ValueError:
        return False


class ClassMap:
    """Data class ids ↔ model class ids.

    Args:
        model_names: the model's class names.
        data_names: the data's (and classifier's) class names.
        model_counts: training images per model class (needed when the model's classes are
            finer; ``None`` otherwise).

    Classes of the same count but other names (a model exported with readable titles) are
    matched by id, as the benchmarks always did.

    Raises:
        ValueError: the model's classes are neither as many as the data's nor finer ones of
            them, or finer ones without their counts.
    """

    def __init__(self, model_names: Sequence[str], data_names: Sequence[str],
                 model_counts: Sequence[int] | None = None) -> None:
        self.data_classes = len(data_names)
        index = {name: i for i, name in enumerate(data_names)}
        self.fine = list(model_names) != list(data_names) and _children_of(model_names, index)
        if not self.fine:
            if len(model_names) != len(data_names):
                raise ValueError(f"the model's {len(model_names)} classes are neither the "
                                 f"data's {len(data_names)} nor finer ones of them "
                                 "(<data class>/<subclass>)")
            if list(model_names) != list(data_names):
                logger.warning("the model's class names are not the data's: classes are "
                               "matched by id")
            self.parents = np.arange(len(data_names))
            self.weights = np.ones(len(data_names))
            return
        if model_counts is None or len(model_counts) != len(model_names):
            raise ValueError("a model with finer classes needs the training-image count of "
                             "each of its classes (--label-data: the .npz it was trained on)")
        self.parents = np.array([index[p] for p in parent_names(model_names)])
        self.weights = np.asarray(model_counts, dtype=np.float64)

    @classmethod
    def for_model(cls, model_names: Sequence[str], data_names: Sequence[str],
                  label_data: str | Path | None = None) -> ClassMap:
        """The map for a model; ``label_data``: the relabelled ``.npz`` it was trained on
        (its training-split label counts weigh the children)."""
        counts = None
        if label_data is not None:
            with np.load(label_data, allow_pickle=False) as data:
                names = [str(n) for n in data["class_names"]]
                if names != list(model_names):
                    raise ValueError(f"{label_data} has other classes than the model")
                train = data["splits"] == [str(s) for s in data["split_names"]].index("train")
                counts = np.bincount(data["labels"][train].astype(np.int64),
                                     minlength=len(names)).tolist()
        return cls(model_names, data_names, counts)

    def to_model(self, labels: np.ndarray, seed: int) -> np.ndarray:
        """A model class for every data class id in ``labels`` (the same ids when the classes
        are the same; else a child drawn by its training-image count, reproducible by
        ``seed``)."""
        labels = np.asarray(labels, dtype=np.int64)
        if not self.fine:
            return labels.copy()
        rng = np.random.default_rng(seed)
        out = np.empty_like(labels)
        for data_class in np.unique(labels):
            children = np.flatnonzero(self.parents == data_class)
            weights = self.weights[children]
            if len(children) == 0 or weights.sum() <= 0:
                raise ValueError(f"no model class (with training images) for data class "
                                 f"{data_class}")
            slots = np.flatnonzero(labels == data_class)
            out[slots] = rng.choice(children, size=len(slots), p=weights / weights.sum())
        return out

    def to_data(self, model_labels: np.ndarray) -> np.ndarray:
        """The data class of every model class id."""
        return self.parents[np.asarray(model_labels, dtype=np.int64)]
