"""Reproducible builder of the offline emoji demo dataset (``python -m train.data emoji``).

Pipeline (see ``shared/spec/demo-data.md``):

1. ``npm pack`` the three pinned packages into ``raw`` and verify their sha1 (cached tarballs are
   reused after verification).
2. Extract the image folders and ``emoji.json`` with :func:`~train.data.fetch.safe_extract`.
3. Label each image from its file name (a code-point sequence) through ``emoji.json``, map the
   Unicode category/subcategory to 17 semantic classes, cross with 3 styles (51 class ids, see
   :mod:`train.data.emoji_labels`). Component swatches and Fluent 3D flags are dropped.
4. Preprocess (RGBA, pad to square, Lanczos resize, composite on white, RGB) and write an
   ImageFolder tree ``out/{train,val}/<NN_style_category>/<code>.png`` with a held-out split by a
   hash of the base emoji code, plus ``labels.json``, ``images.csv`` and ``LICENSES.md``, and
   optionally a compact ``.npz`` with all images.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from hmar_core.images import READ_FORMATS

from .emoji_labels import (
    CATEGORIES,
    CATEGORY_TITLES,
    NUM_CLASSES,
    STYLE_TITLES,
    STYLES,
    EmojiEntry,
    build_emoji_index,
    class_dir_name,
    class_id,
    class_name,
    is_val_emoji,
    lookup_emoji,
    semantic_category,
    split_class_id,
)
from .emoji_sources import (
    DEFAULT_SOURCES,
    EMOJI_DATASOURCE_GOOGLE,
    METADATA_PREFIXES,
    StyleSource,
)
from .fetch import NpmTarball, fetch_npm_tarball, safe_extract
from .licenses import emoji_licenses_markdown

logger = logging.getLogger(__name__)
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

__all__ = [
    "DATASET_TAG",
    "SPLITS",
    "EmojiBuildConfig",
    "EmojiBuildResult",
    "build_emoji_dataset",
    "preprocess_emoji",
]

DATASET_TAG = "hmar-emoji"
SPLITS: tuple[str, ...] = ("train", "val")
IMAGE_SUFFIXES = (".png", ".webp")

@dataclass(frozen=True)
class EmojiBuildConfig:
    """Settings of one dataset build.

    Attributes:
        out: Output folder (created; may only be non-empty if it holds an earlier build).
        raw: Cache folder for tarballs and extracted files.
        size: Output image side in pixels.
        val_fraction: Fraction of base emoji held out for validation.
        npz: Also write all images to this compressed ``.npz`` file when set.
        workers: Processes used for decoding and resizing (1 = in-process).
        sources: One source per style, in :data:`STYLES` order.
        metadata: Tarball that provides ``emoji.json`` and its licence.
    """

    out: Path
    raw: Path = Path("data/raw")
    size: int = 64
    val_fraction: float = 0.05
    npz: Path | None = None
    workers: int = 1
    sources: tuple[StyleSource, ...] = DEFAULT_SOURCES
    metadata: NpmTarball = EMOJI_DATASOURCE_GOOGLE

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if tuple(source.style for source in self.sources) != STYLES:
            raise ValueError(f"sources must cover the styles {STYLES} in this order")


@dataclass(frozen=True)
class EmojiBuildResult:
    """Summary of a finished build.

    Attributes:
        labels: The content written to ``labels.json``.
        num_images: Images written, by split.
        npz_path: Path of the ``.npz`` file, if one was written.
    """

    labels: dict
    num_images: dict[str, int] = field(default_factory=dict)
    npz_path: Path | None = None


@dataclass(frozen=True)
class _Job:
    source: Path
    relative_path: str  # "<split>/<class dir>/<code>.png"
    class_index: int
    split: str
    entry: EmojiEntry


def preprocess_emoji(image: Image.Image, size: int) -> Image.Image:
    """RGBA, pad to a centred square, Lanczos resize, composite on white, RGB.

    Pillow resizes RGBA images with premultiplied alpha, so transparent pixels leave no colour
    fringes.

    Args:
        image: Any Pillow image (RGBA, LA, P with transparency, RGB, ...).
        size: Output side in pixels.

    Returns:
        An RGB image of shape ``size x size``.
    """
    rgba = image.convert("RGBA")
    width, height = rgba.size
    side = max(width, height)
    if width != height:
        square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        square.paste(rgba, ((side - width) // 2, (side - height) // 2))
        rgba = square
    if side != size:
        rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def _process(job: tuple[str, str, int, bool]) -> np.ndarray | str | None:
    """Worker: preprocess one file and write it. Returns the array, None, or an error string."""
    source, target, size, want_array = job
    try:
        with Image.open(source, formats=READ_FORMATS) as image:
            image.load()
            result = preprocess_emoji(image, size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    result.save(target, format="PNG")
    return np.asarray(result, dtype=np.uint8) if want_array else None


def _prepare_out_dir(out: Path) -> None:
    """Create ``out`` or clear an earlier build in it; refuse to touch unrelated folders."""
    if out.exists() and any(out.iterdir()):
        labels = out / "labels.json"
        try:
            tag = json.loads(labels.read_text()).get("dataset")
        except (OSError, ValueError):
            tag = None
        if tag != DATASET_TAG:
            raise FileExistsError(
                f"{out} is not empty and holds no earlier {DATASET_TAG} build (labels.json); "
                "choose an empty or new --out folder"
            )
        logger.info("replacing the earlier build in %s", out)
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
    for split in SPLITS:
        for index in range(NUM_CLASSES):
            (out / split / class_dir_name(index)).mkdir(parents=True, exist_ok=True)


def _iter_images(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


def _plan_jobs(
    config: EmojiBuildConfig, image_dirs: dict[str, Path], index: dict[str, EmojiEntry]
) -> tuple[list[_Job], dict]:
    """Label every image file; return the jobs and the counts of what was dropped."""
    jobs: list[_Job] = []
    dropped: dict[str, dict] = {}
    for source in config.sources:
        unmapped: list[str] = []
        drops: Counter[str] = Counter()
        seen: set[str] = set()
        for path in _iter_images(image_dirs[source.style]):
            entry = lookup_emoji(index, path.stem)
            if entry is None:
                unmapped.append(path.name)
                continue
            category = semantic_category(entry.unicode_category, entry.unicode_subcategory)
            if category is None:
                drops[f"unicode category {entry.unicode_category}"] += 1
                continue
            if category in source.drop_categories:
                drops[f"category {category}"] += 1
                continue
            if entry.code in seen:
                drops["duplicate code"] += 1
                continue
            seen.add(entry.code)
            split = "val" if is_val_emoji(entry.base_code, config.val_fraction) else "train"
            label = class_id(source.style, category)
            relative = f"{split}/{class_dir_name(label)}/{entry.code}.png"
            jobs.append(_Job(path, relative, label, split, entry))
        if unmapped:
            logger.warning(
                "%s: %d files match no emoji.json entry and are skipped: %s",
                source.style, len(unmapped), ", ".join(unmapped[:10]),
            )
        for reason, count in sorted(drops.items()):
            logger.info("%s: dropped %d images (%s)", source.style, count, reason)
        dropped[source.style] = {"unmapped": unmapped, **dict(sorted(drops.items()))}
    jobs.sort(key=lambda job: (SPLITS.index(job.split), job.class_index, job.relative_path))
    return jobs, dropped


def _labels_json(config: EmojiBuildConfig, jobs: list[_Job], dropped: dict) -> dict:
    counts: Counter[tuple[int, str]] = Counter((job.class_index, job.split) for job in jobs)
    classes = []
    for index in range(NUM_CLASSES):
        style, category = split_class_id(index)
        per_split = {split: counts[(index, split)] for split in SPLITS}
        classes.append({
            "id": index,
            "name": class_name(index),
            "dir": class_dir_name(index),
            "title": f"{STYLE_TITLES[style]} · {CATEGORY_TITLES[category]}",
            "style": style,
            "category": category,
            "counts": {**per_split, "total": sum(per_split.values())},
        })
    split_totals = Counter(job.split for job in jobs)
    return {
        "dataset": DATASET_TAG,
        "format_version": 1,
        "size": config.size,
        "num_classes": NUM_CLASSES,
        "class_id_rule": "class_id = style_index * len(categories) + category_index",
        "styles": list(STYLES),
        "categories": list(CATEGORIES),
        "split_rule": (
            f"val if sha256('hmar-emoji-split:' + base_code)[:8] / 2**64 < {config.val_fraction}"
        ),
        "val_fraction": config.val_fraction,
        "counts": {**{s: split_totals[s] for s in SPLITS}, "total": len(jobs)},
        "classes": classes,
        "dropped": dropped,
        "sources": [
            {"style": s.style, "npm": s.tarball.spec, "sha1": s.tarball.sha1}
            for s in config.sources
        ],
        "metadata_source": {"npm": config.metadata.spec, "sha1": config.metadata.sha1},
    }


def _write_images_csv(path: Path, jobs: list[_Job]) -> None:
    columns = ["path", "class_id", "class_name", "split", "code", "base_code", "name",
               "unicode_category", "unicode_subcategory", "source_file"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for job in jobs:
            entry = job.entry
            writer.writerow([job.relative_path, job.class_index, class_name(job.class_index),
                             job.split, entry.code, entry.base_code, entry.name,
                             entry.unicode_category, entry.unicode_subcategory, job.source.name])


def build_emoji_dataset(config: EmojiBuildConfig) -> EmojiBuildResult:
    """Fetch, verify, label, preprocess and write the emoji demo dataset.

    Args:
        config: Build settings.

    Returns:
        The build summary (``labels.json`` content, counts, npz path).

    Raises:
        ChecksumError: A tarball is not the pinned one.
        FileExistsError: ``config.out`` is a non-empty folder that holds no earlier build.
    """
    raw = config.raw
    tarballs = {t.filename: t for t in [s.tarball for s in config.sources] + [config.metadata]}
    paths = {name: fetch_npm_tarball(t, raw) for name, t in sorted(tarballs.items())}
    extracted = raw / "extracted"
    image_dirs: dict[str, Path] = {}
    for source in config.sources:
        image_dirs[source.style] = extracted / source.style
        safe_extract(paths[source.tarball.filename], image_dirs[source.style],
                     [source.image_prefix], expected_sha1=source.tarball.sha1)
    meta_dir = extracted / "meta"
    safe_extract(paths[config.metadata.filename], meta_dir, METADATA_PREFIXES,
                 expected_sha1=config.metadata.sha1)
    records = json.loads((meta_dir / "emoji.json").read_text(encoding="utf-8"))
    index = build_emoji_index(records)
    logger.info("emoji.json: %d records, %d image codes", len(records), len(index))

    jobs, dropped = _plan_jobs(config, image_dirs, index)
    _prepare_out_dir(config.out)
    want_arrays = config.npz is not None
    work = [(str(j.source), str(config.out / j.relative_path), config.size, want_arrays)
            for j in jobs]
    arrays: list[np.ndarray] = []
    kept: list[_Job] = []
    failed: list[str] = []
    with ProcessPoolExecutor(config.workers) if config.workers > 1 else _InProcess() as pool:
        results = pool.map(_process, work, chunksize=64)
        for job, result in tqdm(zip(jobs, results, strict=True), total=len(jobs),
                                desc="emoji images", unit="img"):
            if isinstance(result, str):
                failed.append(f"{job.source.name}: {result}")
                continue
            kept.append(job)
            if result is not None:
                arrays.append(result)
    if failed:
        logger.warning("%d source images could not be decoded and were skipped: %s",
                       len(failed), "; ".join(failed[:5]))
    dropped["undecodable"] = failed

    labels = _labels_json(config, kept, dropped)
    (config.out / "labels.json").write_text(json.dumps(labels, indent=2, ensure_ascii=False) + "\n")
    _write_images_csv(config.out / "images.csv", kept)
    datasource_license = (meta_dir / "LICENSE").read_text(encoding="utf-8")
    (config.out / "LICENSES.md").write_text(emoji_licenses_markdown(
        size=config.size,
        fluent_spec=config.sources[0].tarball.spec,
        google_spec=config.sources[1].tarball.spec,
        twitter_spec=config.sources[2].tarball.spec,
        datasource_license=datasource_license,
    ))
    if config.npz is not None:
        _write_npz(config.npz, kept, arrays, config.size)
    num_images = {split: labels["counts"][split] for split in SPLITS}
    logger.info("wrote %s: %s images", config.out, num_images)
    return EmojiBuildResult(labels=labels, num_images=num_images, npz_path=config.npz)


def _write_npz(path: Path, jobs: list[_Job], arrays: list[np.ndarray], size: int) -> None:
    """Write the compact array form, in the same order as the ImageFolder tree is scanned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(
        tmp,
        images=images,  # (N, H, W, 3) uint8
        labels=np.array([job.class_index for job in jobs], dtype=np.int16),
        splits=np.array([SPLITS.index(job.split) for job in jobs], dtype=np.uint8),
        split_names=np.array(SPLITS),
        paths=np.array([job.relative_path for job in jobs]),
        class_names=np.array([class_name(i) for i in range(NUM_CLASSES)]),
        class_dirs=np.array([class_dir_name(i) for i in range(NUM_CLASSES)]),
    )
    os.replace(tmp, path)
    logger.info("wrote %s (%.1f MB, %d images)", path, path.stat().st_size / 1e6, len(jobs))


class _InProcess:
    """Minimal executor stand-in that maps in the current process (``workers=1``)."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def map(
        self, fn: Callable[[_Item], _Result], items: Iterable[_Item], chunksize: int = 1
    ) -> Iterator[_Result]:
        del chunksize
        return map(fn, items)
