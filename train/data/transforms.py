"""The official HMAR/VAR image preprocessing, with explicit, reproducible crop randomness.

Official recipe (``utils/data.py`` of HMAR/VAR, reference spec §4.3): resize the shorter side to
``round(1.125 * res)`` with Lanczos, random crop ``res`` (train) or centre crop (val), convert to
a float tensor and map ``[0, 1] -> [-1, 1]``. No horizontal flip.

The crop offset comes from a NumPy generator seeded with ``(seed, epoch, index)``, so a sample's
crop depends only on those three numbers, never on worker scheduling or on how many samples were
drawn before: a resumed run sees exactly the same crops.

Shapes: ``(C, H, W)`` with ``C = 3``; ``res`` is the output side.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = [
    "center_crop_offset",
    "crop_rng",
    "official_preprocess",
    "pil_to_tensor",
    "random_crop_offset",
    "resize_shorter_side",
    "to_rgb",
]


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert to RGB; images with transparency are composited onto white first.

    Args:
        image: Any Pillow image.

    Returns:
        An RGB image of the same size.
    """
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "RGBa", "La", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side is ``size``, with Lanczos (torchvision ``Resize(int)``).

    The longer side becomes ``int(size * long / short)``, as in torchvision.

    Args:
        image: The input image.
        size: Target length of the shorter side.

    Returns:
        The resized image (the input itself when it already has that shorter side).
    """
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    if short == size:
        return image
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    return image.resize(new_size, Image.Resampling.LANCZOS)


def crop_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Generator for the random crop of sample ``index`` in ``epoch`` of a run seeded ``seed``.

    Args:
        seed: Run seed (non-negative).
        epoch: Epoch number (non-negative).
        index: Sample index in the dataset (non-negative).

    Returns:
        A fresh NumPy generator; the same triple always gives the same stream.
    """
    return np.random.default_rng([seed, epoch, index])


def random_crop_offset(
    width: int, height: int, resolution: int, rng: np.random.Generator
) -> tuple[int, int]:
    """Top-left corner of a uniform random ``resolution`` crop (torchvision ``RandomCrop``).

    Args:
        width: Image width.
        height: Image height.
        resolution: Crop side.
        rng: Source of randomness.

    Returns:
        ``(left, top)``.
    """
    top = int(rng.integers(0, height - resolution + 1))
    left = int(rng.integers(0, width - resolution + 1))
    return left, top


def center_crop_offset(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Top-left corner of the centred crop (torchvision ``CenterCrop`` rounding).

    Args:
        width: Image width.
        height: Image height.
        resolution: Crop side.

    Returns:
        ``(left, top)``.
    """
    return int(round((width - resolution) / 2.0)), int(round((height - resolution) / 2.0))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image to a float32 tensor in ``[-1, 1]``.

    Args:
        image: An RGB image of size ``W x H``.

    Returns:
        Tensor of shape ``(3, H, W)``, ``x / 255 * 2 - 1``.
    """
    array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
    return tensor.mul_(2.0).sub_(1.0)


def official_preprocess(
    image: Image.Image,
    resolution: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    already_sized: bool = False,
) -> torch.Tensor:
    """Shorter side to ``round(1.125 * resolution)`` (Lanczos), crop, to ``[-1, 1]``.

    Args:
        image: Input image in any mode (transparency is composited onto white).
        resolution: Output side ``res``.
        train: Random crop when True (needs ``rng``), centre crop otherwise.
        rng: Generator for the random crop, e.g. from :func:`crop_rng`.
        already_sized: Skip the resize; the image must already be at least ``res`` on both sides.

    Returns:
        Tensor of shape ``(3, res, res)``, float32 in ``[-1, 1]``.

    Raises:
        ValueError: ``train`` without ``rng``, or an ``already_sized`` image smaller than ``res``.
    """
    image = to_rgb(image)
    if not already_sized:
        image = resize_shorter_side(image, round(1.125 * resolution))
    width, height = image.size
    if min(width, height) < resolution:
        raise ValueError(
            f"image of size {width}x{height} is smaller than the resolution {resolution}; "
            "already_sized=True needs images of at least that size"
        )
    if train:
        if rng is None:
            raise ValueError("train=True needs an explicit rng for the random crop")
        left, top = random_crop_offset(width, height, resolution, rng)
    else:
        left, top = center_crop_offset(width, height, resolution)
    if (left, top, width, height) != (0, 0, resolution, resolution):
        image = image.crop((left, top, left + resolution, top + resolution))
    return pil_to_tensor(image)
