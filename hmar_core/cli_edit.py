"""Editing subcommands of ``python -m hmar_core``: ``inpaint``, ``outpaint``, ``edit``.

Registered by :func:`hmar_core.cli.build_parser` through :func:`add_edit_subcommands`; the
handlers build an :class:`~hmar_core.editing.EditOptions` and call the library.

Examples::

    python -m hmar_core inpaint photo.png mask.png --out filled.png --seed 1
    python -m hmar_core outpaint photo.png --right 128 --out wide.png
    python -m hmar_core edit photo.png --class 12 --strength 3 --variants 4 --out cat.png
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .editing import (
    FILL_MODES,
    FIT_MODES,
    EditOptions,
    EditPreview,
    EditResult,
    default_class_strength,
    edit,
    outpaint,
)

__all__ = ["add_edit_subcommands", "confidence_heatmap", "read_image"]

logger = logging.getLogger(__name__)

AddArgs = Callable[[argparse.ArgumentParser], None]


def read_image(path: str | Path) -> Image.Image:
    """Open an image file (fully loaded), turning unreadable files into ``ValueError``."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except UnidentifiedImageError as err:
        raise ValueError(f"{path}: not an image file") from err


def confidence_heatmap(confidence_PP: np.ndarray, side: int) -> Image.Image:
    """A (P, P) confidence map in [0, 1] as a side×side colour heatmap (red = unsure)."""
    gray = np.clip(np.rint(np.asarray(confidence_PP, dtype=np.float32) * 255), 0, 255)
    gray = cv2.resize(gray.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
    bgr = cv2.applyColorMap(255 - gray, cv2.COLORMAP_JET)
    return Image.fromarray(bgr[..., ::-1].copy())


def _add_edit_args(parser: argparse.ArgumentParser, *, masked_fit: bool = True) -> None:
    parser.add_argument("--out", default="edited.png",
                        help="output PNG (with --variants N: OUT_0.png, OUT_1.png, ...)")
    parser.add_argument("--variants", type=int, default=1, help="samples in one batch")
    parser.add_argument("--grow", type=int, default=1, help="grow the token mask (tokens)")
    parser.add_argument("--feather", type=int, default=8, help="blend width in pixels")
    parser.add_argument("--previews", help="folder for the per-scale preview PNGs")
    parser.add_argument("--confidence", help="PNG for the final token-confidence heatmap")
    if masked_fit:
        parser.add_argument("--fit", choices=FIT_MODES, default="whole",
                            help="whole image, or a square crop around the mask")
        parser.add_argument("--padding", type=int, default=32,
                            help="pixels around the mask for --fit masked")


def _options(args: argparse.Namespace, class_id: int | None, strength: int,
             **extra: Any) -> EditOptions:
    return EditOptions(class_id=class_id, seed=args.seed, steps=args.steps, cfg=args.cfg,
                       top_k=args.top_k, top_p=args.top_p, strength=strength, grow=args.grow,
                       feather=args.feather, num_variants=args.variants, **extra)


def _preview_writer(folder: str | None) -> Callable[[EditPreview], None] | None:
    if folder is None:
        return None
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)

    def write(preview: EditPreview) -> None:
        for b, image in enumerate(preview.images):
            image.save(out / f"window{preview.window:02d}_scale{preview.scale:02d}_{b}.png")

    return write


def _save(result: EditResult, args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(result.images) == 1 else [
        out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}") for i in range(len(result.images))]
    for image, path in zip(result.images, paths):
        if image.mode in ("RGBA", "LA") and path.suffix.lower() in (".jpg", ".jpeg"):
            image = image.convert("RGB")  # results keep the input's alpha; JPEG has none
        image.save(path)
    if args.confidence and result.confidence is not None:
        confidence_heatmap(result.confidence[0].numpy(), 256).save(args.confidence)
    logger.info("saved %s (seed %s, %.2f s in the sampler)", ", ".join(map(str, paths)),
                result.seed, sum(result.scale_seconds))
    return 0


def _pipeline(args: argparse.Namespace) -> Any:
    from .cli import load_pipeline

    return load_pipeline(args.checkpoint, args.vae, args.hmar, args.device, args.engine,
                         args.kind)


def _class(pipe: Any, value: str | None) -> int | None:
    from .cli import _class_index

    return None if value is None else _class_index(pipe, value)


def _inpaint(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    options = _options(args, _class(pipe, args.class_id), args.strength, fit=args.fit,
                       padding=args.padding)
    result = edit(pipe, read_image(args.image), read_image(args.mask), options,
                  on_preview=_preview_writer(args.previews))
    return _save(result, args)


def _outpaint(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    options = _options(args, _class(pipe, args.class_id), args.strength)
    result = outpaint(pipe, read_image(args.image), left=args.left, right=args.right,
                      top=args.top, bottom=args.bottom, options=options, fill=args.fill,
                      on_preview=_preview_writer(args.previews))
    return _save(result, args)


def _edit(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    strength = (default_class_strength(len(pipe.patch_nums)) if args.strength is None
                else args.strength)
    options = _options(args, _class(pipe, args.class_id), strength, fit=args.fit,
                       padding=args.padding)
    mask = read_image(args.mask) if args.mask else None
    result = edit(pipe, read_image(args.image), mask, options,
                  on_preview=_preview_writer(args.previews))
    return _save(result, args)


def add_edit_subcommands(
    subparsers: Any, add_model_args: AddArgs, add_sampling_args: AddArgs
) -> None:
    """Register ``inpaint``, ``outpaint`` and ``edit`` on the CLI's subparsers.

    Args:
        subparsers: the ``add_subparsers()`` object of the main parser.
        add_model_args, add_sampling_args: the CLI's shared argument groups.
    """
    inpaint = subparsers.add_parser("inpaint", help="regenerate a masked region")
    inpaint.add_argument("image", help="input image (any size and mode)")
    inpaint.add_argument("mask", help="mask image: white / opaque = regenerate")
    inpaint.add_argument("--class", dest="class_id",
                         help="guide with a class id or name (default: none)")
    inpaint.add_argument("--strength", type=int, default=0,
                         help="coarse scales kept from the source (0 = from scratch)")
    add_model_args(inpaint)
    add_sampling_args(inpaint)
    _add_edit_args(inpaint)
    inpaint.set_defaults(func=_inpaint)

    out = subparsers.add_parser("outpaint", help="extend the canvas and fill the new area")
    out.add_argument("image", help="input image (any size and mode)")
    for side in ("left", "right", "top", "bottom"):
        out.add_argument(f"--{side}", type=int, default=0, help=f"pixels to add on the {side}")
    out.add_argument("--fill", choices=FILL_MODES, default="replicate",
                     help="pre-fill of the new area")
    out.add_argument("--class", dest="class_id", help="guide with a class id or name")
    out.add_argument("--strength", type=int, default=0, help="coarse scales kept")
    add_model_args(out)
    add_sampling_args(out)
    _add_edit_args(out, masked_fit=False)
    out.set_defaults(func=_outpaint)

    change = subparsers.add_parser("edit", help="change the class of a region or the image")
    change.add_argument("image", help="input image (any size and mode)")
    change.add_argument("--class", dest="class_id", required=True, help="target class id or name")
    change.add_argument("--mask", help="region to change (default: the whole image)")
    change.add_argument("--strength", type=int, default=None,
                        help="coarse scales kept from the source (default: ~30%% of them)")
    add_model_args(change)
    add_sampling_args(change)
    _add_edit_args(change)
    change.set_defaults(func=_edit)
