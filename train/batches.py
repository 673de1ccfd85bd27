"""From a data path to batches: dataset opening, checks, and a resumable step-indexed sampler.

The image datasets themselves are :mod:`train.data` (ImageFolder / ``.npz``, official
preprocessing, unreadable files skipped and counted). This module adds what a trainer needs:

* :func:`open_datasets` — train and held-out splits, class names (from ``labels.json`` when
  present), and clear errors for empty datasets and class folders without images.
* :class:`StepBatchSampler` — the global batch of step ``s`` is a pure function of
  ``(seed, s)``: positions ``s·B … (s+1)·B − 1`` of an endless stream of per-epoch permutations
  (or class-balanced draws). Rank r takes the r-th contiguous slice. So a run resumed at step
  ``s`` continues with exactly the batches it would have seen, and N processes see the same
  global batches as one.
* :func:`image_batches` — a DataLoader over that sampler, starting at any step.

Sample keys are ``(epoch, index)`` pairs, so random crops depend only on
``(seed, epoch, index)`` (see :mod:`train.data.transforms`).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from train.data import ImageFolderDataset, NpzImageDataset, class_balanced_weights

from .config import RunConfig
from .distributed import DistContext
from .randomness import Purpose, derived_generator

__all__ = ["DataSplits", "KeyedSubset", "StepBatchSampler", "image_batches", "open_datasets"]

logger = logging.getLogger(__name__)

ImageDataset = ImageFolderDataset | NpzImageDataset


class KeyedSubset(Dataset):
    """A subset of a dataset that forwards ``(epoch, index)`` keys.

    Args:
        dataset: the full dataset.
        indices: which of its samples to keep, in order.
    """

    def __init__(self, dataset: ImageDataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.targets = [dataset.targets[i] for i in self.indices]
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (self.dataset.epoch, key)
        return self.dataset[(epoch, self.indices[index])]


@dataclass
class DataSplits:
    """Datasets of a run.

    Attributes:
        train: the training split (random crops).
        val: the held-out split (centre crops), or ``None``.
        class_names: a readable name per class id.
    """

    train: Dataset
    val: Dataset | None
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _class_names(root: Path, classes: list[str]) -> list[str]:
    """Readable class names: ``labels.json`` titles (emoji builder) or the folder names."""
    labels = root / "labels.json"
    if labels.is_file():
        try:
            entries = {e["dir"]: e for e in json.loads(labels.read_text())["classes"]}
            return [str(entries[c].get("title") or entries[c]["name"]) if c in entries else c
                    for c in classes]
        except (KeyError, TypeError, ValueError) as err:
            logger.warning("%s: unreadable class names (%s); using folder names", labels, err)
    return list(classes)


def _check_classes(dataset: ImageDataset, where: str, allow_empty: bool) -> None:
    counts = dataset.class_counts()
    empty = [name for name, count in zip(dataset.classes, counts) if count == 0]
    if empty and not allow_empty:
        raise ValueError(
            f"{where}: {len(empty)} of {len(counts)} class folders have no readable images: "
            f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}. Remove them, add "
            "images, or set run.allow_empty_classes: true to keep their class ids unused"
        )
    if empty:
        logger.info("%s: %d classes without images (allowed): %s", where, len(empty),
                    ", ".join(empty))


def open_datasets(run: RunConfig, resolution: int) -> DataSplits:
    """Open the training and held-out data of ``run.data_path`` at ``resolution``.

    Layouts: ``root/train/<class>/…`` (+ ``root/val/<class>/…``), a flat ``root/<class>/…``
    (then ``run.val_fraction`` of it is held out, chosen by the seed), or an ``.npz`` with
    ``train``/``val`` splits.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a file that is not an ``.npz``, no readable image, or class folders
            without images (unless allowed).
    """
    path = Path(run.data_path)
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    if path.is_file() and path.suffix != ".npz":
        raise ValueError(f"data path {path} is a file, not a folder: give an ImageFolder root "
                         "(root/<class>/<image>) or an .npz of python -m train.data emoji --npz")
    val: Dataset | None
    if path.suffix == ".npz":
        train = NpzImageDataset(path, resolution, train=True, split="train", seed=run.seed)
        try:
            val = NpzImageDataset(path, resolution, train=False, split="val", seed=run.seed)
        except ValueError:
            val = None
        root, where = path.parent, str(path)
    elif (path / "train").is_dir():
        train = ImageFolderDataset(path / "train", resolution, train=True, seed=run.seed)
        val = None
        if (path / "val").is_dir():
            val = ImageFolderDataset(path / "val", resolution, train=False,
                                     classes=train.classes, seed=run.seed)
        root, where = path, str(path / "train")
    else:
        train = ImageFolderDataset(path, resolution, train=True, seed=run.seed)
        root, where, val = path, str(path), None
    _check_classes(train, where, run.allow_empty_classes)
    if run.hflip > 0:
        train.set_flips(run.hflip, run.hflip_skip)  # training images only: val is not drawn
        logger.info("mirroring training images with probability %g (never: %s)", run.hflip,
                    ", ".join(run.hflip_skip) or "none")
    names = _class_names(root, train.classes)
    if val is None and run.val_fraction > 0 and len(train) >= 2:
        order = torch.randperm(len(train), generator=derived_generator(run.seed,
                                                                         Purpose.VAL_SPLIT))
        held = max(1, round(run.val_fraction * len(train)))
        held_out, kept = sorted(order[:held].tolist()), sorted(order[held:].tolist())
        val_view = copy.copy(train)
        val_view.train = False
        val = KeyedSubset(val_view, held_out)
        train_split: Dataset = KeyedSubset(train, kept)
        logger.info("holding out %d of %d images for validation", held, len(train))
    else:
        train_split = train
    logger.info("data %s: %d training images, %s held-out, %d classes", path, len(train_split),
                len(val) if val is not None else "no", len(names))
    return DataSplits(train_split, val, names)


class StepBatchSampler:
    """Endless batch sampler whose batch of step ``s`` depends only on ``(seed, s)``.

    Args:
        targets: class id of every sample (for class balancing and the sample count).
        global_batch: samples per step over all ranks.
        seed: run seed.
        ctx: the process context (selects this rank's slice).
        start_step: first step to yield.
        class_balanced: draw samples with probability ∝ count(class) ** -balance_power, with
            replacement.
        balance_power: see :func:`train.data.class_balanced_weights` (1: every class equally
            often).
    """

    def __init__(self, targets: Sequence[int], global_batch: int, seed: int, ctx: DistContext,
                 start_step: int = 0, class_balanced: bool = False,
                 balance_power: float = 1.0) -> None:
        if not targets:
            raise ValueError("cannot sample from an empty dataset")
        self.num_samples = len(targets)
        self.global_batch = global_batch
        self.seed = seed
        self.local = ctx.local_slice(global_batch)
        self.start_step = start_step
        self.weights = (class_balanced_weights(targets, power=balance_power) if class_balanced
                        else None)
        self._orders: dict[int, torch.Tensor] = {}

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Sample indices of one pass (a permutation, or balanced draws), int64 (N,)."""
        if epoch not in self._orders:
            generator = derived_generator(self.seed, Purpose.DATA_ORDER, epoch)
            if self.weights is None:
                order = torch.randperm(self.num_samples, generator=generator)
            else:
                order = torch.multinomial(self.weights, self.num_samples, replacement=True,
                                          generator=generator)
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = order
        return self._orders[epoch]

    def global_keys(self, step: int) -> list[tuple[int, int]]:
        """The ``(epoch, index)`` keys of the whole global batch of ``step``."""
        keys = []
        for position in range(step * self.global_batch, (step + 1) * self.global_batch):
            epoch, offset = divmod(position, self.num_samples)
            keys.append((epoch, int(self.epoch_order(epoch)[offset])))
        return keys

    def local_keys(self, step: int) -> list[tuple[int, int]]:
        """This rank's slice of :meth:`global_keys`."""
        return self.global_keys(step)[self.local]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.local_keys(step)
            step += 1


def image_batches(
    dataset: Dataset, sampler: StepBatchSampler, num_workers: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(images (b, 3, H, W) float32, labels (b,) int64)`` on ``device``."""
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers,
        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator(),  # keeps the global RNG untouched (exact resume)
    )
    for images, labels in loader:
        yield (images.to(device, non_blocking=True),
               labels.to(device, dtype=torch.int64, non_blocking=True))
