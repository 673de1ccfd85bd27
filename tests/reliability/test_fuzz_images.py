"""Fuzzing of image and mask conversion (hmar_core.images) and its documented size limit.

Property: any PIL image (L, LA, P, RGB, RGBA, I;16, CMYK, ...), numpy array or damaged file
gives either a uint8 (H, W, 3) image / a bool (H, W) mask, or a ``ValueError``; never another
exception. Inputs above ``MAX_INPUT_PIXELS`` (64 MP) are refused before memory is allocated.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from reliability_support import MODES, PeakRss, count_case, fuzz_settings, make_image, record

from hmar_core import images as im

SIDES = st.one_of(st.integers(1, 40), st.sampled_from([1, 2, 3, 255, 513]))


def _check_rgb(rgb: np.ndarray, height: int, width: int) -> None:
    assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3)
    assert rgb.flags["C_CONTIGUOUS"]


@fuzz_settings(reduced=120, full=1500)
@given(mode=st.sampled_from(MODES), width=SIDES, height=SIDES, seed=st.integers(0, 2**32 - 1),
       mask_mode=st.sampled_from(MODES), mask_width=SIDES, mask_height=SIDES)
def test_any_pil_image_and_mask(mode, width, height, seed, mask_mode, mask_width, mask_height):
    image = make_image(mode, width, height, seed)
    _check_rgb(im.to_rgb(image), height, width)
    mask = make_image(mask_mode, mask_width, mask_height, seed + 1)
    out = im.to_mask(mask, (height, width))  # another size: resized with a warning
    assert out.dtype == np.bool_ and out.shape == (height, width)
    count_case("images.pil", "ok")


DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64,
                          np.bool_, np.complex64])
SPECIAL = st.sampled_from([0.0, -1.0, 1.0, 255.0, 65535.0, 1e30, -1e30, np.nan, np.inf, -np.inf])


@fuzz_settings(reduced=150, full=2000)
@given(dtype=DTYPES, height=st.integers(0, 24), width=st.integers(0, 24),
       channels=st.sampled_from([None, 1, 2, 3, 4, 5]), special=SPECIAL,
       seed=st.integers(0, 2**32 - 1))
def test_any_numpy_image_and_mask(dtype, height, width, channels, special, seed):
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels is None else (height, width, channels)
    values = rng.normal(0, 300, shape)
    if values.size:
        values.flat[int(rng.integers(values.size))] = special
    with np.errstate(invalid="ignore", over="ignore"):
        array = values.astype(dtype)
    for convert in (lambda a: im.to_rgb(a), lambda a: im.to_mask(a, (7, 5))):
        try:
            out = convert(array)
        except ValueError:
            count_case("images.numpy", "ValueError")
            continue
        assert out.dtype in (np.uint8, np.bool_)
        assert out.shape in ((height, width, 3), (7, 5))
        count_case("images.numpy", "ok")


def _encoded() -> dict[str, bytes]:
    """Valid small files of many formats and modes."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    files = {}
    for fmt, mode in (("PNG", "RGBA"), ("PNG", "RGB"), ("PNG", "L"), ("PNG", "P"),
                      ("PNG", "LA"), ("PNG", "I;16"), ("JPEG", "RGB"), ("JPEG", "CMYK"),
                      ("WEBP", "RGBA"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "CMYK")):
        buffer = io.BytesIO()
        image = make_image(mode, 24, 20, 1) if mode == "I;16" else rgb.convert(mode)
        image.save(buffer, format=fmt)
        files[f"{fmt}-{mode}"] = buffer.getvalue()
    return files


ENCODED = _encoded()


@fuzz_settings(reduced=250, full=4000)
@given(name=st.sampled_from(sorted(ENCODED)), data=st.data())
def test_damaged_files_give_value_errors(name, data):
    raw = bytearray(ENCODED[name])
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(1, len(raw) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        image = Image.open(io.BytesIO(bytes(raw)))  # the caller's step; may refuse the bytes
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        count_case("images.damaged_files", "refused by Image.open")
        return
    declared = (image.height, image.width)  # damage may change the header's size too
    for convert, shape in ((im.to_rgb, (*declared, 3)),
                           (lambda i: im.to_mask(i, (20, 24)), (20, 24))):
        try:
            out = convert(image)
        except ValueError:
            count_case("images.damaged_files", "ValueError")
            continue
        assert out.shape == shape
        count_case("images.damaged_files", "ok")


# ------------------------------------------------------------------------------- size limit
def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width × height`` (grey) but holds one row: a decompression bomb's
    header without its cost to build."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = zlib.compress(b"\0" * (width + 1))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row)
            + chunk(b"IEND", b""))


def test_the_limit_is_64_megapixels():
    assert im.MAX_INPUT_PIXELS == 8192 * 8192


@pytest.mark.parametrize("shape", [(8193, 8192, 3), (8192, 8193, 4), (20000, 20000),
                                   (1, 8192 * 8192 + 1, 3)])
def test_huge_arrays_are_refused_before_allocating(shape):
    view = np.broadcast_to(np.zeros((), np.uint8), shape)  # costs no memory
    with PeakRss() as probe:
        with pytest.raises(ValueError, match="MAX_INPUT_PIXELS"):
            im.to_rgb(view)
        with pytest.raises(ValueError, match="MAX_INPUT_PIXELS"):
            im.to_mask(view, (16, 16))
    assert probe.growth < 32, f"refusing a huge input used {probe.growth:.0f} MiB"
    assert probe.seconds < 5


@pytest.mark.parametrize("size", [(8193, 8192), (12000, 12000)])
def test_decompression_bombs_are_refused_from_the_header(size):
    """Below PIL's own bomb limit (179 MP, where ``Image.open`` already refuses) the header
    says enough: no pixel is decoded."""
    image = Image.open(io.BytesIO(png_header_only(*size)))  # lazy: nothing decoded yet
    assert image.mode == "L" and image.size == size
    with PeakRss() as probe:
        with pytest.raises(ValueError, match="MAX_INPUT_PIXELS"):
            im.to_rgb(image)
        with pytest.raises(ValueError, match="MAX_INPUT_PIXELS"):
            im.to_mask(image, (16, 16))
    assert probe.growth < 32, f"refusing {size} used {probe.growth:.0f} MiB"


@pytest.mark.parametrize("channels", [3, 4])
def test_an_image_at_the_limit_converts_in_bounded_memory(channels):
    """8192 × 8192 is accepted; conversion peaks at a few times the output (192 MiB)."""
    view = np.broadcast_to(np.full((channels,), 200, np.uint8), (8192, 8192, channels))
    with PeakRss() as probe:
        rgb = im.to_rgb(view)
    output_mib = rgb.nbytes / 2**20
    assert rgb.shape == (8192, 8192, 3)
    assert np.array_equal(rgb[-1:, -1:], im.to_rgb(np.ascontiguousarray(view[:1, :1])))
    record("memory", **{f"to_rgb_64mp_{channels}ch_peak_mib": round(probe.growth),
                        f"to_rgb_64mp_{channels}ch_seconds": round(probe.seconds, 2)})
    if probe.supported:
        assert probe.growth <= 3.5 * output_mib + 64, (
            f"peak +{probe.growth:.0f} MiB for a {output_mib:.0f} MiB result")
