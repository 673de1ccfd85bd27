"""Image datasets with the official preprocessing: an ImageFolder reader and its ``.npz`` twin.

Both return ``(image, label)`` with ``image`` of shape ``(3, res, res)``, float32 in ``[-1, 1]``
(see :mod:`train.data.transforms`). The random crop of sample ``i`` depends only on
``(seed, epoch, i)``: call :meth:`set_epoch` each epoch, or index with an ``(epoch, i)`` pair
(works with persistent DataLoader workers), and a resumed run reproduces its crops exactly.

ImageFolder layout: ``root/<class folder>/**/<image>``; class ids follow the sorted folder names
(or an explicit ``classes`` list). The emoji builder writes all 51 class folders with zero-padded
names, so there the class id equals the folder position even for classes without images.
"""

from __future__ import annotations

import abc
import fnmatch
import logging
import os
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hmar_core.images import READ_FORMATS

from .scan import scan_class_folder
from .transforms import crop_rng, official_preprocess

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "NpzImageDataset"]

#: File name endings scanned as images: those of :data:`hmar_core.images.READ_FORMATS`, the only
#: formats opened (a file of any other format is skipped as unreadable, whatever its name).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff",
)
_MAX_FALLBACKS = 16


class _CroppedImageDataset(Dataset, abc.ABC):
    """Shared crop/epoch/fallback logic; subclasses provide ``_load_image`` and ``targets``."""

    def __init__(
        self, resolution: int, train: bool, *, already_sized: bool, seed: int
    ) -> None:
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.resolution = resolution
        self.train = train
        self.already_sized = already_sized
        self.seed = seed
        self.epoch = 0
        self.flip_probability = 0.0
        self.unflipped_classes: frozenset[int] = frozenset()
        self.classes: list[str] = []
        self.targets: list[int] = []
        self.num_load_failures = 0

    def __len__(self) -> int:
        return len(self.targets)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops integer indexing returns.

        Args:
            epoch: Non-negative epoch number.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def set_flips(self, probability: float, skip: Sequence[str] = ()) -> None:
        """Mirror training images left-right with ``probability`` (after the crop, from the
        sample's own crop generator), except those of classes whose name contains a pattern of
        ``skip`` (shell wildcards allowed: ``"_flag"`` skips ``"16_fluent3d_flag"``).

        Raises:
            ValueError: the probability is outside [0, 1], or a pattern matches no class.
        """
        if not 0 <= probability <= 1:
            raise ValueError(f"flip probability must be in [0, 1], got {probability}")
        unflipped = set()
        for pattern in skip:
            matched = {i for i, name in enumerate(self.classes)
                       if fnmatch.fnmatchcase(name, f"*{pattern}*")}
            if not matched:
                raise ValueError(f"hflip_skip pattern {pattern!r} matches no class "
                                 f"(classes: {', '.join(self.classes[:6])}, ...)")
            unflipped |= matched
        self.flip_probability = float(probability)
        self.unflipped_classes = frozenset(unflipped)

    def class_counts(self) -> list[int]:
        """Number of samples per class id, ``len(classes)`` entries."""
        counts = Counter(self.targets)
        return [counts[index] for index in range(len(self.classes))]

    @abc.abstractmethod
    def _load_image(self, index: int) -> Image.Image:
        """The decoded image of sample ``index`` (each storage format implements this)."""

    def _describe(self, index: int) -> str:
        return f"sample {index}"

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Sample ``key`` (an index, or an ``(epoch, index)`` pair).

        Returns:
            ``(image, label)``: image ``(3, res, res)`` float32 in ``[-1, 1]``, label an int.
        """
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        length = len(self)
        if not -length <= index < length:
            raise IndexError(f"index {index} out of range for {length} samples")
        index %= length
        for attempt in range(min(_MAX_FALLBACKS, length)):
            current = (index + attempt) % length
            try:
                image = self._load_image(current)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                self.num_load_failures += 1
                logger.warning(
                    "skipping unreadable %s (%s: %s); using the next sample instead "
                    "(%d failures so far in this process)",
                    self._describe(current), type(error).__name__, error, self.num_load_failures,
                )
                continue
            rng = crop_rng(self.seed, epoch, index) if self.train else None
            tensor = official_preprocess(
                image, self.resolution, train=self.train, rng=rng,
                already_sized=self.already_sized,
            )
            target = self.targets[current]
            # drawn after the crop and only when flips are on: without them the crops are the
            # official ones, draw for draw
            if (rng is not None and self.flip_probability > 0
                    and target not in self.unflipped_classes
                    and rng.random() < self.flip_probability):
                tensor = tensor.flip(-1)
            return tensor, target
        raise RuntimeError(f"{min(_MAX_FALLBACKS, length)} consecutive samples from {index} "
                           "could not be read")


def _check_image(path: Path) -> str | None:
    """None if Pillow can open and verify the file, else the reason."""
    try:
        with Image.open(path, formats=READ_FORMATS) as image:
            image.verify()
    except Exception as error:  # noqa: BLE001 - any failure means "skip this file"
        return f"{type(error).__name__}: {error}"
    return None


class ImageFolderDataset(_CroppedImageDataset):
    """Images in ``root/<class>/...`` with the official HMAR preprocessing.

    Args:
        root: Folder with one sub-folder per class.
        resolution: Output side ``res``.
        train: Random crop (train) or centre crop (validation).
        already_sized: Images are already at (or near) ``res``: skip the resize, only crop.
        classes: Class folder names in class-id order; default: sorted sub-folders of ``root``.
        seed: Seed of the random crops.
        check_images: Open and verify every file once at construction and skip the broken ones
            (logged, listed in ``skipped``). Files that fail later are replaced by the next sample
            and counted in ``num_load_failures``.
        extensions: File name endings (lowercase) counted as images.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is a file.
        ValueError: No readable image was found.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int,
        train: bool,
        *,
        already_sized: bool = False,
        classes: Sequence[str] | None = None,
        seed: int = 0,
        check_images: bool = True,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        super().__init__(resolution, train, already_sized=already_sized, seed=seed)
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"dataset folder {self.root} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"dataset path {self.root} is a file, not a folder of "
                                     "class folders")
        if classes is None:
            classes = sorted(
                entry.name for entry in os.scandir(self.root)
                if entry.is_dir() and not entry.name.startswith(".")
            )
        self.classes = list(classes)
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[tuple[Path, str]] = []
        suffixes = tuple(extension.lower() for extension in extensions)
        empty: list[str] = []
        folders = [self.root / name for name in self.classes]
        for label, name in enumerate(self.classes):
            others = folders[:label] + folders[label + 1:]
            files = scan_class_folder(folders[label], suffixes, self.root, others)
            if check_images:
                good = []
                for path in files:
                    reason = _check_image(path)
                    if reason is None:
                        good.append(path)
                    else:
                        self.skipped.append((path, reason))
                files = good
            if not files:
                empty.append(name)
            self.samples.extend((path, label) for path in files)
        self.targets = [label for _, label in self.samples]
        if self.skipped:
            logger.warning(
                "%s: skipped %d unreadable image files (first: %s: %s)",
                self.root, len(self.skipped), self.skipped[0][0], self.skipped[0][1],
            )
        if not self.samples:
            raise ValueError(
                f"no readable images found in {self.root} (expected root/<class>/<image> with "
                f"extensions {', '.join(suffixes)}; {len(self.classes)} class folders, "
                f"{len(self.skipped)} unreadable files)"
            )
        if empty:
            logger.warning("%s: %d of %d classes have no images: %s", self.root, len(empty),
                           len(self.classes), ", ".join(empty))
        logger.info("%s: %d images in %d classes", self.root, len(self.samples), len(self.classes))

    def _load_image(self, index: int) -> Image.Image:
        with Image.open(self.samples[index][0], formats=READ_FORMATS) as image:
            image.load()
            return image

    def _describe(self, index: int) -> str:
        return str(self.samples[index][0])


class NpzImageDataset(_CroppedImageDataset):
    """The ``.npz`` form written by the emoji builder, giving the same tensors as the folders.

    Samples keep the order of the file, which is the scan order of :class:`ImageFolderDataset`
    on ``out/<split>``, so index ``i`` here and there is the same image.

    Args:
        path: The ``.npz`` file (keys ``images`` (N, H, W, 3) uint8, ``labels``, ``splits``,
            ``split_names``, ``paths``, ``class_dirs``).
        resolution: Output side ``res``.
        train: Random crop (train) or centre crop (validation).
        split: Which split to keep (``"train"``, ``"val"``), or None for all samples.
        already_sized: Skip the resize, only crop.
        seed: Seed of the random crops.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int,
        train: bool,
        *,
        split: str | None = "train",
        already_sized: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(resolution, train, already_sized=already_sized, seed=seed)
        try:
            with np.load(path, allow_pickle=False) as data:
                images, labels = data["images"], data["labels"].astype(np.int64)
                paths = data["paths"]
                keep = np.ones(len(labels), dtype=bool)
                split_names = [str(name) for name in data["split_names"]]
                splits = data["splits"]
                self.classes = [str(name) for name in data["class_dirs"]]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path} is not a dataset .npz of python -m train.data emoji "
                             f"--npz ({type(err).__name__}: {err})") from err
        if split is not None:
            if split not in split_names:
                raise ValueError(f"unknown split {split!r}; the file has {split_names}")
            keep = splits == split_names.index(split)
        self.images = np.ascontiguousarray(images[keep])  # (N, H, W, 3) uint8
        self.paths = [str(item) for item in paths[keep]]
        self.targets = [int(label) for label in labels[keep]]
        if not self.targets:
            raise ValueError(f"{path} holds no samples for split {split!r}")

    def _load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])  # (H, W, 3) uint8 -> RGB

    def _describe(self, index: int) -> str:
        return self.paths[index]
