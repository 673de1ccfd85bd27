"""Data for HMAR training: ImageFolder/npz datasets with the official preprocessing, a
class-balanced sampler, and the reproducible builder of the offline emoji demo dataset
(``python -m train.data emoji --out data/emoji64``)."""

from .emoji import EmojiBuildConfig, EmojiBuildResult, build_emoji_dataset, preprocess_emoji
from .emoji_labels import (
    CATEGORIES,
    NUM_CLASSES,
    STYLES,
    class_dir_name,
    class_id,
    class_name,
    semantic_category,
)
from .fetch import ChecksumError, NpmTarball, UnsafeArchiveError, safe_extract
from .folder import IMAGE_EXTENSIONS, ImageFolderDataset, NpzImageDataset
from .sampler import class_balanced_sampler, class_balanced_weights
from .transforms import crop_rng, official_preprocess

__all__ = [
    "CATEGORIES",
    "IMAGE_EXTENSIONS",
    "NUM_CLASSES",
    "STYLES",
    "ChecksumError",
    "EmojiBuildConfig",
    "EmojiBuildResult",
    "ImageFolderDataset",
    "NpmTarball",
    "NpzImageDataset",
    "UnsafeArchiveError",
    "build_emoji_dataset",
    "class_balanced_sampler",
    "class_balanced_weights",
    "class_dir_name",
    "class_id",
    "class_name",
    "crop_rng",
    "official_preprocess",
    "preprocess_emoji",
    "safe_extract",
    "semantic_category",
]
