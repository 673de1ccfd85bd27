"""Class space of the emoji demo dataset: styles, 17 semantic categories and emoji codes.

The labels are pure functions of Unicode data from ``emoji.json`` (package
``emoji-datasource``): every emoji has a ``category`` (10 Unicode groups) and a ``subcategory``
(99 subgroups). :func:`semantic_category` merges them into 17 classes, and every class is crossed
with 3 art styles, giving ``len(STYLES) * len(CATEGORIES) = 51`` class ids::

    class_id = style_index * 17 + category_index

with the fixed orders of :data:`STYLES` and :data:`CATEGORIES` (never reorder them: trained
checkpoints store class ids). Flags exist only for Noto and Twemoji (Fluent 3D flags are dropped
because they are Noto-style copies), so ``fluent3d/flag`` is a valid id without images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CATEGORIES",
    "CATEGORY_TITLES",
    "NUM_CLASSES",
    "STYLES",
    "STYLE_TITLES",
    "EmojiEntry",
    "build_emoji_index",
    "class_dir_name",
    "class_id",
    "class_name",
    "is_val_emoji",
    "lookup_emoji",
    "normalize_code",
    "semantic_category",
    "split_class_id",
]

STYLES: tuple[str, ...] = ("fluent3d", "noto", "twemoji")
"""Art styles in class-id order."""

STYLE_TITLES: Mapping[str, str] = {
    "fluent3d": "Fluent 3D",
    "noto": "Noto",
    "twemoji": "Twemoji",
}

CATEGORIES: tuple[str, ...] = (
    "face",
    "heart_emotion",
    "hand_body",
    "person",
    "mammal",
    "other_animal",
    "plant",
    "food",
    "drink_dishware",
    "vehicle",
    "place",
    "sky_time",
    "activity",
    "clothing",
    "object",
    "symbol",
    "flag",
)
"""Semantic categories in class-id order (the table of ``shared/spec/demo-data.md``)."""

CATEGORY_TITLES: Mapping[str, str] = {
    "face": "Face",
    "heart_emotion": "Heart & emotion",
    "hand_body": "Hand & body part",
    "person": "Person",
    "mammal": "Mammal",
    "other_animal": "Other animal",
    "plant": "Plant",
    "food": "Food",
    "drink_dishware": "Drink & dishware",
    "vehicle": "Vehicle",
    "place": "Place",
    "sky_time": "Sky, weather & time",
    "activity": "Activity",
    "clothing": "Clothing",
    "object": "Object",
    "symbol": "Symbol",
    "flag": "Flag",
}

NUM_CLASSES: int = len(STYLES) * len(CATEGORIES)


def semantic_category(category: str, subcategory: str) -> str | None:
    """Map a Unicode (category, subcategory) pair to one of the 17 semantic categories.

    Args:
        category: Unicode emoji group as in ``emoji.json``, e.g. ``"Smileys & Emotion"``.
        subcategory: Unicode emoji subgroup, e.g. ``"face-smiling"``.

    Returns:
        A name from :data:`CATEGORIES`, or ``None`` for ``"Component"`` (skin-tone swatches,
        which are not images of anything).

    Raises:
        ValueError: The category is unknown (a new Unicode group needs a decision here).
    """
    if category == "Smileys & Emotion":
        if subcategory in ("heart", "emotion"):
            return "heart_emotion"
        return "face"  # face-*, cat-face, monkey-face
    if category == "People & Body":
        if subcategory.startswith("hand") or subcategory == "body-parts":
            return "hand_body"
        return "person"
    if category == "Animals & Nature":
        if subcategory == "animal-mammal":
            return "mammal"
        if subcategory.startswith("plant"):
            return "plant"
        return "other_animal"  # animal-bird, -bug, -marine, -reptile, -amphibian
    if category == "Food & Drink":
        if subcategory in ("drink", "dishware"):
            return "drink_dishware"
        return "food"
    if category == "Travel & Places":
        if subcategory.startswith("transport"):
            return "vehicle"
        if subcategory in ("sky & weather", "time"):
            return "sky_time"
        return "place"  # place-*, hotel
    if category == "Activities":
        return "activity"
    if category == "Objects":
        return "clothing" if subcategory == "clothing" else "object"
    if category == "Symbols":
        return "symbol"
    if category == "Flags":
        return "flag"
    if category == "Component":
        return None
    raise ValueError(f"unknown Unicode emoji category {category!r} (subcategory {subcategory!r})")


def class_id(style: str, category: str) -> int:
    """Class id of a (style, category) pair: ``style_index * 17 + category_index``.

    Args:
        style: A name from :data:`STYLES`.
        category: A name from :data:`CATEGORIES`.

    Returns:
        The class id in ``[0, NUM_CLASSES)``.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    return STYLES.index(style) * len(CATEGORIES) + CATEGORIES.index(category)


def split_class_id(class_index: int) -> tuple[str, str]:
    """Inverse of :func:`class_id`.

    Args:
        class_index: A class id in ``[0, NUM_CLASSES)``.

    Returns:
        The (style, category) pair.
    """
    if not 0 <= class_index < NUM_CLASSES:
        raise ValueError(f"class id {class_index} outside [0, {NUM_CLASSES})")
    style_index, category_index = divmod(class_index, len(CATEGORIES))
    return STYLES[style_index], CATEGORIES[category_index]


def class_name(class_index: int) -> str:
    """Readable class name such as ``"noto/face"``."""
    style, category = split_class_id(class_index)
    return f"{style}/{category}"


def class_dir_name(class_index: int) -> str:
    """Folder name of a class, zero-padded so that sorted folder order equals class-id order.

    Args:
        class_index: A class id in ``[0, NUM_CLASSES)``.

    Returns:
        e.g. ``"17_noto_face"``.
    """
    style, category = split_class_id(class_index)
    return f"{class_index:02d}_{style}_{category}"


def normalize_code(code: str) -> str:
    """Canonical form of a code-point sequence: lowercase, ``-`` separated, 4+ hex digits each.

    Args:
        code: e.g. ``"1F44B-1F3FB"``, ``"1f44b_1f3fb"`` or ``"23-fe0f-20e3"``.

    Returns:
        e.g. ``"1f44b-1f3fb"`` or ``"0023-fe0f-20e3"``.
    """
    parts = code.strip().lower().replace("_", "-").split("-")
    hex_digits = set("0123456789abcdef")
    if not all(part and set(part) <= hex_digits for part in parts):
        raise ValueError(f"not a code-point sequence: {code!r}")
    return "-".join(part.zfill(4) for part in parts)


@dataclass(frozen=True)
class EmojiEntry:
    """Unicode facts of one emoji image (a base emoji or one of its skin-tone variants).

    Attributes:
        code: Normalised code-point sequence of this image, e.g. ``"1f44b-1f3fb"``.
        base_code: Normalised code of the base emoji (same as ``code`` for a base emoji).
        name: Unicode name of the base emoji, e.g. ``"WAVING HAND SIGN"``.
        unicode_category: e.g. ``"People & Body"``.
        unicode_subcategory: e.g. ``"hand-fingers-open"``.
    """

    code: str
    base_code: str
    name: str
    unicode_category: str
    unicode_subcategory: str


def build_emoji_index(records: Iterable[Mapping[str, Any]]) -> dict[str, EmojiEntry]:
    """Index ``emoji.json`` records by every code that may name an image file.

    Keys are the normalised ``unified`` and ``non_qualified`` codes of each base emoji and of
    each of its ``skin_variations``.

    Args:
        records: The parsed list from ``emoji.json``.

    Returns:
        Mapping from normalised code to its entry.
    """
    index: dict[str, EmojiEntry] = {}
    for record in records:
        base = normalize_code(record["unified"])
        variants: list[Mapping[str, Any]] = [record]
        variants.extend((record.get("skin_variations") or {}).values())
        for variant in variants:
            entry = EmojiEntry(
                code=normalize_code(variant["unified"]),
                base_code=base,
                name=str(record.get("name") or record.get("short_name") or base),
                unicode_category=record["category"],
                unicode_subcategory=record["subcategory"],
            )
            for key in ("unified", "non_qualified"):
                if variant.get(key):
                    index.setdefault(normalize_code(variant[key]), entry)
    return index


def lookup_emoji(index: Mapping[str, EmojiEntry], stem: str) -> EmojiEntry | None:
    """Find the entry of an image file stem such as ``"1f44b-1f3fb"`` or ``"263a_fe0f"``.

    Tries the normalised stem, then the stem without ``fe0f`` variation selectors, then (for
    subdivision flags such as England, named without their terminating tag by some packages)
    the stem with ``e007f`` appended.

    Args:
        index: Result of :func:`build_emoji_index`.
        stem: File name without extension.

    Returns:
        The entry, or ``None`` when the stem names no known emoji.
    """
    try:
        code = normalize_code(stem)
    except ValueError:
        return None
    if code in index:
        return index[code]
    stripped = "-".join(part for part in code.split("-") if part != "fe0f")
    if stripped in index:
        return index[stripped]
    if code.startswith("1f3f4-e00") and not code.endswith("-e007f"):
        return index.get(code + "-e007f")
    return None


def is_val_emoji(base_code: str, val_fraction: float) -> bool:
    """Deterministic held-out split by a hash of the base emoji code.

    All skin-tone variants and all styles of one emoji fall on the same side, so the
    validation set holds emoji the model has never seen in any style or tone.

    Args:
        base_code: Normalised base code, e.g. ``"1f44b"``.
        val_fraction: Expected fraction of emoji in the validation split, in ``[0, 1]``.

    Returns:
        True for the validation split.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    digest = hashlib.sha256(f"hmar-emoji-split:{base_code}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction
