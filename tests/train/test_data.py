"""Fast CPU tests of train.data (tiny images made in a tmp dir), plus one slow real-data check."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train.data import (
    CATEGORIES,
    NUM_CLASSES,
    STYLES,
    ChecksumError,
    EmojiBuildConfig,
    ImageFolderDataset,
    NpmTarball,
    NpzImageDataset,
    UnsafeArchiveError,
    build_emoji_dataset,
    class_balanced_sampler,
    class_balanced_weights,
    class_dir_name,
    class_id,
    class_name,
    crop_rng,
    official_preprocess,
    preprocess_emoji,
    safe_extract,
    semantic_category,
)
from train.data.emoji_labels import (
    build_emoji_index,
    is_val_emoji,
    lookup_emoji,
    normalize_code,
    split_class_id,
)
from train.data.emoji_sources import StyleSource
from train.data.fetch import file_sha1

# ----------------------------------------------------------------------------- class mapping


@pytest.mark.parametrize(
    ("category", "subcategory", "expected"),
    [
        ("Smileys & Emotion", "face-smiling", "face"),
        ("Smileys & Emotion", "face-concerned", "face"),
        ("Smileys & Emotion", "cat-face", "face"),
        ("Smileys & Emotion", "monkey-face", "face"),
        ("Smileys & Emotion", "heart", "heart_emotion"),
        ("Smileys & Emotion", "emotion", "heart_emotion"),
        ("People & Body", "hand-fingers-open", "hand_body"),
        ("People & Body", "hands", "hand_body"),
        ("People & Body", "body-parts", "hand_body"),
        ("People & Body", "person-role", "person"),
        ("People & Body", "family", "person"),
        ("Animals & Nature", "animal-mammal", "mammal"),
        ("Animals & Nature", "animal-bird", "other_animal"),
        ("Animals & Nature", "animal-amphibian", "other_animal"),
        ("Animals & Nature", "plant-flower", "plant"),
        ("Food & Drink", "food-fruit", "food"),
        ("Food & Drink", "drink", "drink_dishware"),
        ("Food & Drink", "dishware", "drink_dishware"),
        ("Travel & Places", "transport-ground", "vehicle"),
        ("Travel & Places", "place-building", "place"),
        ("Travel & Places", "hotel", "place"),
        ("Travel & Places", "sky & weather", "sky_time"),
        ("Travel & Places", "time", "sky_time"),
        ("Activities", "sport", "activity"),
        ("Objects", "clothing", "clothing"),
        ("Objects", "tool", "object"),
        ("Symbols", "transport-sign", "symbol"),
        ("Symbols", "keycap", "symbol"),
        ("Flags", "country-flag", "flag"),
        ("Flags", "subdivision-flag", "flag"),
        ("Component", "skin-tone", None),
    ],
)
def test_semantic_category(category, subcategory, expected):
    assert semantic_category(category, subcategory) == expected


def test_semantic_category_unknown_group_raises():
    with pytest.raises(ValueError, match="unknown Unicode emoji category"):
        semantic_category("Aliens", "ufo")


def test_class_ids_names_and_folders():
    assert (len(STYLES), len(CATEGORIES), NUM_CLASSES) == (3, 17, 51)
    assert class_id("fluent3d", "face") == 0
    assert class_id("noto", "face") == 17
    assert class_id("twemoji", "flag") == 50
    assert class_name(18) == "noto/heart_emotion"
    for index in range(NUM_CLASSES):
        assert class_id(*split_class_id(index)) == index
    folders = [class_dir_name(index) for index in range(NUM_CLASSES)]
    assert sorted(folders) == folders  # ImageFolder order == class-id order
    with pytest.raises(ValueError):
        class_id("openmoji", "face")


def test_codes_lookup_and_split():
    assert normalize_code("23_FE0F_20E3") == "0023-fe0f-20e3"
    with pytest.raises(ValueError):
        normalize_code("not-hex")
    records = [
        {"unified": "1F44B", "non_qualified": None, "name": "WAVING HAND SIGN",
         "category": "People & Body", "subcategory": "hand-fingers-open",
         "skin_variations": {"1F3FB": {"unified": "1F44B-1F3FB"}}},
        {"unified": "263A-FE0F", "non_qualified": "263A", "name": "WHITE SMILING FACE",
         "category": "Smileys & Emotion", "subcategory": "face-affection"},
        {"unified": "1F3F4-E0067-E0062-E0065-E006E-E0067-E007F", "name": "England",
         "category": "Flags", "subcategory": "subdivision-flag"},
    ]
    index = build_emoji_index(records)
    variant = lookup_emoji(index, "1f44b-1f3fb")
    assert variant is not None and variant.base_code == "1f44b"
    assert lookup_emoji(index, "263a").code == "263a-fe0f"
    assert lookup_emoji(index, "1f3f4-e0067_e0062_e0065_e006e_e0067").name == "England"
    assert lookup_emoji(index, "ffff") is None
    assert lookup_emoji(index, "readme") is None
    codes = [f"{value:x}" for value in range(0x1F000, 0x1F000 + 4000)]
    held_out = [is_val_emoji(code, 0.05) for code in codes]
    assert held_out == [is_val_emoji(code, 0.05) for code in codes]  # deterministic
    assert 0.03 < np.mean(held_out) < 0.07
    assert not any(is_val_emoji(code, 0.0) for code in codes)


# ----------------------------------------------------------------------------- preprocessing


def test_preprocess_emoji_pads_resizes_and_whitens():
    image = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (10, 5, 30, 15))
    out = preprocess_emoji(image, 16)
    assert out.mode == "RGB" and out.size == (16, 16)
    array = np.asarray(out)
    assert (array[0, 0] == 255).all()  # transparent padding became white
    assert tuple(array[8, 8]) == (255, 0, 0)


def _gradient(width: int, height: int) -> Image.Image:
    x = np.arange(width)[None, :, None] * 3
    y = np.arange(height)[:, None, None] * 5
    return Image.fromarray(((x + y + np.array([0, 60, 120])) % 256).astype(np.uint8))


def test_official_preprocess_shapes_range_determinism():
    image = _gradient(50, 40)
    val = official_preprocess(image, 32, train=False)
    assert val.shape == (3, 32, 32) and val.dtype == torch.float32
    assert val.min() >= -1.0 and val.max() <= 1.0
    assert torch.equal(val, official_preprocess(image, 32, train=False))
    first = official_preprocess(image, 32, train=True, rng=crop_rng(7, 0, 3))
    again = official_preprocess(image, 32, train=True, rng=crop_rng(7, 0, 3))
    assert torch.equal(first, again)
    crops = {official_preprocess(image, 32, train=True, rng=crop_rng(7, e, 3)).sum().item()
             for e in range(8)}
    assert len(crops) > 1  # other epochs give other crops
    with pytest.raises(ValueError, match="rng"):
        official_preprocess(image, 32, train=True)
    sized = _gradient(32, 32)
    exact = official_preprocess(sized, 32, train=True, rng=crop_rng(0, 0, 0), already_sized=True)
    expected = torch.from_numpy(np.array(sized)).permute(2, 0, 1).float() / 255 * 2 - 1
    torch.testing.assert_close(exact, expected)
    with pytest.raises(ValueError, match="smaller"):
        official_preprocess(_gradient(20, 40), 32, train=False, already_sized=True)


def _make_folder(root: Path, counts: dict[str, int], size: int = 24) -> None:
    for offset, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for index in range(count):
            _gradient(size + index, size).rotate(offset * 90).save(root / name / f"{index}.png")


def test_image_folder_dataset(tmp_path, caplog):
    _make_folder(tmp_path, {"a": 3, "b": 2, "c_empty": 0})
    (tmp_path / "b" / "corrupt.png").write_bytes(b"\x89PNG not really a png")
    good = io.BytesIO()
    _gradient(24, 24).save(good, format="PNG")
    (tmp_path / "b" / "truncated.png").write_bytes(good.getvalue()[:60])
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderDataset(tmp_path, 16, train=True, seed=3)
    assert dataset.classes == ["a", "b", "c_empty"]
    assert len(dataset) == 5 and dataset.targets == [0, 0, 0, 1, 1]
    assert len(dataset.skipped) == 2
    assert "skipped 2 unreadable" in caplog.text and "c_empty" in caplog.text
    assert dataset.class_counts() == [3, 2, 0]
    image, label = dataset[4]
    assert image.shape == (3, 16, 16) and label == 1
    assert -1.0 <= image.min() and image.max() <= 1.0
    assert torch.equal(dataset[2][0], dataset[2][0])
    dataset.set_epoch(5)
    assert torch.equal(dataset[2][0], dataset[(5, 2)][0])
    val = ImageFolderDataset(tmp_path, 16, train=False)
    assert torch.equal(val[0][0], val[0][0])
    # A file that disappears after the scan is replaced by the next sample, never a crash.
    os.remove(dataset.samples[0][0])
    with caplog.at_level(logging.WARNING):
        image, label = dataset[0]
    assert dataset.num_load_failures == 1 and label == 0 and image.shape == (3, 16, 16)


def test_empty_and_missing_dataset_errors(tmp_path):
    (tmp_path / "only_class").mkdir()
    (tmp_path / "only_class" / "broken.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no readable images"):
        ImageFolderDataset(tmp_path, 16, train=True)
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(tmp_path / "missing", 16, train=True)


def test_balanced_sampler():
    targets = [0] * 90 + [1] * 9 + [2] * 1
    weights = class_balanced_weights(targets)
    assert weights.shape == (100,)
    torch.testing.assert_close(weights[[0, 90, 99]], torch.tensor([1 / 90, 1 / 9, 1.0],
                                                                  dtype=torch.float64))
    assert class_balanced_weights([0, 2], num_classes=4).tolist() == [1.0, 1.0]
    draws = list(class_balanced_sampler(targets, generator=torch.Generator().manual_seed(0),
                                        num_samples=3000))
    again = list(class_balanced_sampler(targets, generator=torch.Generator().manual_seed(0),
                                        num_samples=3000))
    assert draws == again
    frequencies = np.bincount(np.array(targets)[draws], minlength=3) / 3000
    assert np.allclose(frequencies, 1 / 3, atol=0.05)
    with pytest.raises(ValueError):
        class_balanced_weights([])


def test_tempered_balance_draws_classes_by_the_root_of_their_size():
    targets = [0] * 400 + [1] * 100 + [2] * 25
    assert class_balanced_weights(targets, power=0.0).tolist() == [1.0] * len(targets)
    weights = class_balanced_weights(targets, power=0.5)
    torch.testing.assert_close(weights[[0, 400, 500]], torch.tensor([1 / 20, 1 / 10, 1 / 5],
                                                                   dtype=torch.float64))
    shares = torch.bincount(torch.tensor(targets), weights=weights) / weights.sum()
    torch.testing.assert_close(shares, torch.tensor([20.0, 10.0, 5.0], dtype=torch.float64) / 35)
    for power in (-0.1, 1.5):
        with pytest.raises(ValueError, match="power must be in"):
            class_balanced_weights(targets, power=power)


# ----------------------------------------------------------------------------- archives


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_safe_extract_refuses_traversal(tmp_path):
    for bad_name in ("package/assets/../../escape.txt", "/tmp/absolute.txt"):
        archive = tmp_path / "bad.tgz"
        with tarfile.open(archive, "w:gz") as tar:
            _add_bytes(tar, "package/assets/ok.txt", b"ok")
            _add_bytes(tar, bad_name, b"evil")
        with pytest.raises(UnsafeArchiveError):
            safe_extract(archive, tmp_path / "dest", ["package/assets/"])
        assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "dest").exists()
    archive = tmp_path / "link.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("package/assets/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(UnsafeArchiveError, match="non-regular"):
        safe_extract(archive, tmp_path / "dest", ["package/assets/"])
    archive = tmp_path / "good.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        _add_bytes(tar, "package/assets/a.txt", b"a")
        _add_bytes(tar, "package/other.txt", b"b")
    assert safe_extract(archive, tmp_path / "dest", ["package/assets/"]) == 1
    assert (tmp_path / "dest" / "a.txt").read_bytes() == b"a"
    digest = file_sha1(archive)
    assert safe_extract(archive, tmp_path / "cached", ["package/"], expected_sha1=digest) == 2
    (tmp_path / "cached" / "other.txt").unlink()  # a complete extraction is not redone
    assert safe_extract(archive, tmp_path / "cached", ["package/"], expected_sha1=digest) == 2
    assert not (tmp_path / "cached" / "other.txt").exists()


# ----------------------------------------------------------------------------- builder


def _emoji_png(color: tuple[int, int, int], size: int, image_format: str) -> bytes:
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste((*color, 255), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    data = io.BytesIO()
    image.save(data, format=image_format)
    return data.getvalue()


_FAKE_RECORDS = [
    {"unified": "1F600", "name": "GRINNING FACE", "category": "Smileys & Emotion",
     "subcategory": "face-smiling"},
    {"unified": "1F44B", "name": "WAVING HAND SIGN", "category": "People & Body",
     "subcategory": "hand-fingers-open",
     "skin_variations": {"1F3FB": {"unified": "1F44B-1F3FB"}}},
    {"unified": "1F1FA-1F1F8", "name": "US", "category": "Flags", "subcategory": "country-flag"},
    {"unified": "1F3FB", "name": "LIGHT SKIN TONE", "category": "Component",
     "subcategory": "skin-tone"},
    {"unified": "1F415", "name": "DOG", "category": "Animals & Nature",
     "subcategory": "animal-mammal"},
]


def _fake_packages(raw: Path) -> tuple[StyleSource, ...]:
    """Three tiny npm-like tarballs in ``raw``; returns sources pinned to their sha1."""
    raw.mkdir(parents=True)
    codes = ["1f600", "1f44b", "1f44b-1f3fb", "1f1fa-1f1f8", "1f3fb", "1f415"]
    layouts = [("fluent3d", "package/assets/", "webp", 32, ("flag",)),
               ("noto", "package/img/google/64/", "png", 16, ()),
               ("twemoji", "package/img/twitter/64/", "png", 16, ())]
    sources = []
    for style_index, (style, prefix, extension, size, drops) in enumerate(layouts):
        filename = f"fake-{style}-1.0.0.tgz"
        with tarfile.open(raw / filename, "w:gz") as tar:
            _add_bytes(tar, "package/emoji.json", json.dumps(_FAKE_RECORDS).encode())
            _add_bytes(tar, "package/LICENSE", b"The MIT License (MIT)\nCopyright (c) test\n")
            _add_bytes(tar, "package/README.md", b"readme")
            for code_index, code in enumerate(codes):
                color = (40 * code_index, 80 * style_index, 200)
                _add_bytes(tar, f"{prefix}{code}.{extension}",
                           _emoji_png(color, size, extension.upper()))
            _add_bytes(tar, f"{prefix}unknown-thing.{extension}", b"")
        pinned = NpmTarball(f"fake-{style}@1.0.0", filename, file_sha1(raw / filename))
        sources.append(StyleSource(style, pinned, prefix, drops))
    return tuple(sources)


def test_build_emoji_dataset_end_to_end(tmp_path):
    sources = _fake_packages(tmp_path / "raw")
    out = tmp_path / "emoji8"
    config = EmojiBuildConfig(out=out, raw=tmp_path / "raw", size=8, val_fraction=0.3,
                              npz=out / "emoji8.npz", sources=sources,
                              metadata=sources[1].tarball)
    result = build_emoji_dataset(config)
    labels = json.loads((out / "labels.json").read_text())
    assert labels == result.labels
    assert labels["num_classes"] == 51 and len(labels["classes"]) == 51
    counts = {entry["name"]: entry["counts"]["total"] for entry in labels["classes"]}
    assert counts["fluent3d/flag"] == 0 and counts["noto/flag"] == 1  # Fluent flags dropped
    assert counts["noto/hand_body"] == 2 and counts["twemoji/face"] == 1
    assert counts["fluent3d/mammal"] == 1
    assert labels["counts"]["total"] == 5 + 5 + 4  # Noto, Twemoji, Fluent (no flag)
    assert labels["dropped"]["noto"]["unmapped"] == ["unknown-thing.png"]
    # Skin-tone variants share their base emoji's split.
    splits = {path.parent.parent.name for path in out.glob("*/*/1f44b*.png")}
    assert len(splits) == 1
    written = sorted(out.glob("*/*/*.png"))
    assert len(written) == 14
    assert all(Image.open(path).size == (8, 8) and Image.open(path).mode == "RGB"
               for path in written)
    licenses = (out / "LICENSES.md").read_text()
    for needle in ("Microsoft", "Apache License", "CC-BY 4.0", "Copyright (c) test"):
        assert needle in licenses
    # The npz gives the same tensors as the folder tree, in the same order.
    for split in ("train", "val"):
        if labels["counts"][split] == 0:
            continue
        folder = ImageFolderDataset(out / split, 8, train=True, seed=1)
        packed = NpzImageDataset(out / "emoji8.npz", 8, train=True, split=split, seed=1)
        assert folder.classes == packed.classes and folder.targets == packed.targets
        for index in range(len(folder)):
            assert torch.equal(folder[index][0], packed[index][0])
    # Rebuilding replaces the earlier build; an unrelated folder is refused.
    build_emoji_dataset(config)
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_emoji_dataset(EmojiBuildConfig(out=tmp_path / "unrelated", raw=tmp_path / "raw",
                                             sources=sources, metadata=sources[1].tarball))


def test_checksum_mismatch_fails_clearly(tmp_path):
    sources = _fake_packages(tmp_path / "raw")
    wrong = NpmTarball(sources[0].tarball.spec, sources[0].tarball.filename, "0" * 40)
    bad_sources = (StyleSource("fluent3d", wrong, "package/assets/"), *sources[1:])
    config = EmojiBuildConfig(out=tmp_path / "out", raw=tmp_path / "raw", sources=bad_sources,
                              metadata=sources[1].tarball)
    with pytest.raises(ChecksumError, match="expected sha1 0000"):
        build_emoji_dataset(config)


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("HMAR_DATA_DIR"),
    reason="set HMAR_DATA_DIR to a built emoji dataset (python -m train.data emoji)",
)
def test_built_emoji_dataset_labels():
    root = Path(os.environ["HMAR_DATA_DIR"])
    labels = json.loads((root / "labels.json").read_text())
    assert labels["dataset"] == "hmar-emoji" and labels["num_classes"] == 51
    assert labels["styles"] == list(STYLES) and labels["categories"] == list(CATEGORIES)
    by_name = {entry["name"]: entry for entry in labels["classes"]}
    assert [entry["id"] for entry in labels["classes"]] == list(range(51))
    assert by_name["fluent3d/flag"]["counts"]["total"] == 0
    assert all(entry["counts"]["total"] > 0 for name, entry in by_name.items()
               if name != "fluent3d/flag")
    assert 10_000 < labels["counts"]["total"] < 11_000
    assert 0.03 < labels["counts"]["val"] / labels["counts"]["total"] < 0.08
    for split in ("train", "val"):
        for entry in labels["classes"]:
            files = list((root / split / entry["dir"]).glob("*.png"))
            assert len(files) == entry["counts"][split], (split, entry["name"])
    # Noto and Twemoji come from the same emoji.json and have identical class counts.
    for category in CATEGORIES:
        assert (by_name[f"noto/{category}"]["counts"] == by_name[f"twemoji/{category}"]["counts"])
    assert "Apache License" in (root / "LICENSES.md").read_text()
