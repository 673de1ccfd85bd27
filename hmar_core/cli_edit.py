"""Editing subcommands of ``python -m hmar_core``: ``inpaint``, ``outpaint``, ``edit``.

Registered by :func:`hmar_core.cli.build_parser` through :func:`add_edit_subcommands`; the
handlers check the outputs (:mod:`hmar_core.cli_outputs`), read the inputs with their size
checked from the header (:func:`hmar_core.images.open_image`), build an
:class:`~hmar_core.editing.EditOptions` and call the library. Shared options come from
:mod:`hmar_core.cli_common`; this module never imports :mod:`hmar_core.cli`.

Examples::

    python -m hmar_core inpaint photo.png mask.png --out filled.png --seed 1
    python -m hmar_core outpaint photo.png --right 128 --out wide.png
    python -m hmar_core edit photo.png --class 12 --strength 3 --variants 4 --out cat.png

``--variants N`` runs N independent edits, variant ``i`` with seed ``SEED + i``
(:mod:`hmar_core.variants`): ``cat_2.png`` above is what ``--seed SEED+2`` gives alone.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .cli_common import add_model_args, add_sampling_args, class_index, load_pipeline
from .cli_outputs import check_image_outputs, check_preview_folder, variant_paths
from .editing import (
    DEFAULT_CLASS_REVISE,
    FILL_MODES,
    FIT_MODES,
    EditOptions,
    EditPreview,
    EditResult,
)
from .editing.spec import MAX_VARIANTS
from .images import open_image
from .pipeline import Pipeline
from .variants import edit_variants, outpaint_variants

__all__ = ["add_edit_subcommands", "confidence_heatmap", "revise_arg"]

logger = logging.getLogger(__name__)


def confidence_heatmap(confidence_PP: np.ndarray, side: int) -> Image.Image:
    """A (P, P) confidence map in [0, 1] as a side×side colour heatmap (red = unsure)."""
    gray = np.clip(np.rint(np.asarray(confidence_PP, dtype=np.float32) * 255), 0, 255)
    gray = cv2.resize(gray.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
    bgr = cv2.applyColorMap(255 - gray, cv2.COLORMAP_JET)
    return Image.fromarray(bgr[..., ::-1].copy())


def _add_edit_args(parser: argparse.ArgumentParser, *, masked_fit: bool = True) -> None:
    parser.add_argument("--out", default="edited.png",
                        help="output PNG (with --variants N: OUT_0.png, OUT_1.png, ...)")
    parser.add_argument("--variants", type=int, default=1,
                        help="pictures to make; variant i uses seed SEED+i (the same picture "
                             "as --seed SEED+i alone)")
    parser.add_argument("--grow", type=int, default=1, help="grow the token mask (tokens)")
    parser.add_argument("--feather", type=int, default=8, help="blend width in pixels")
    parser.add_argument("--previews", help="folder for the per-scale preview PNGs")
    parser.add_argument("--confidence", help="PNG for the final token-confidence heatmap")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs (never an input)")
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


def revise_arg(text: str) -> float | None:
    """``--revise``: a number of nats, or ``off`` (``None``: kept whole)."""
    if text.strip().lower() == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of nats or 'off', got {text!r}") from None


def _check_outputs(args: argparse.Namespace, inputs: list[str | None]) -> None:
    """Refuse bad outputs before the model is loaded (see :mod:`hmar_core.cli_outputs`)."""
    if not 1 <= args.variants <= MAX_VARIANTS:
        raise ValueError(f"--variants must be in [1, {MAX_VARIANTS}], got {args.variants}")
    outputs = [("--out", path) for path in variant_paths(args.out, args.variants)]
    if args.confidence:
        outputs.append(("--confidence", args.confidence))
    inputs = inputs + [args.checkpoint, args.vae, args.hmar]
    check_image_outputs(outputs, inputs, args.overwrite)
    check_preview_folder(args.previews, inputs, args.overwrite)


def _preview_writer(folder: str | None) -> Callable[[int, EditPreview], None] | None:
    """Previews as ``windowNN_scaleNN_V.png`` (V: the variant)."""
    if folder is None:
        return None
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)

    def write(variant: int, preview: EditPreview) -> None:
        for image in preview.images:
            image.save(out / f"window{preview.window:02d}_scale{preview.scale:02d}_{variant}.png")

    return write


def _save(results: list[EditResult], args: argparse.Namespace) -> int:
    """Write every variant (``OUT`` or ``OUT_i``) and the first one's confidence heatmap."""
    images = [(image, result) for result in results for image in result.images]
    paths = variant_paths(args.out, len(images))
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for (image, result), path in zip(images, paths):
        if image.mode in ("RGBA", "LA") and path.suffix.lower() in (".jpg", ".jpeg"):
            image = image.convert("RGB")  # results keep the input's alpha; JPEG has none
        image.save(path)
        logger.info("saved %s (seed %s, %.2f s in the sampler)", path, result.seed,
                    sum(result.scale_seconds))
    first = results[0]
    if args.confidence and first.confidence is not None:
        Path(args.confidence).parent.mkdir(parents=True, exist_ok=True)
        confidence_heatmap(first.confidence[0].numpy(), 256).save(args.confidence)
    return 0


def _pipeline(args: argparse.Namespace) -> Pipeline:
    return load_pipeline(args.checkpoint, args.vae, args.hmar, args.device, args.engine,
                         args.kind, args.fp8)


def _class(pipe: Pipeline, value: str | None) -> int | None:
    return None if value is None else class_index(pipe, value)


def _inpaint(args: argparse.Namespace) -> int:
    _check_outputs(args, [args.image, args.mask])
    image, mask = open_image(args.image), open_image(args.mask, "mask")
    pipe = _pipeline(args)
    options = _options(args, _class(pipe, args.class_id), args.strength, fit=args.fit,
                       padding=args.padding)
    results = edit_variants(pipe, image, mask, options, on_preview=_preview_writer(args.previews))
    return _save(results, args)


def _outpaint(args: argparse.Namespace) -> int:
    _check_outputs(args, [args.image])
    image = open_image(args.image)
    pipe = _pipeline(args)
    options = _options(args, _class(pipe, args.class_id), args.strength)
    extents = {"left": args.left, "right": args.right, "top": args.top, "bottom": args.bottom}
    results = outpaint_variants(pipe, image, extents, options, fill=args.fill,
                                on_preview=_preview_writer(args.previews))
    return _save(results, args)


def _edit(args: argparse.Namespace) -> int:
    _check_outputs(args, [args.image, args.mask])
    image = open_image(args.image)
    mask = open_image(args.mask, "mask") if args.mask else None
    pipe = _pipeline(args)
    defaults = pipe.class_edit_defaults()  # the model's, where flags leave them open
    strength = defaults.strength if args.strength is None else args.strength
    revise = defaults.revise if "revise" not in vars(args) else args.revise
    options = _options(args, _class(pipe, args.class_id), strength, fit=args.fit,
                       padding=args.padding, revise=revise)
    results = edit_variants(pipe, image, mask, options,
                            on_preview=_preview_writer(args.previews))
    return _save(results, args)


def add_edit_subcommands(subparsers: Any) -> list[argparse.ArgumentParser]:
    """Register ``inpaint``, ``outpaint`` and ``edit`` on the CLI's subparsers.

    Args:
        subparsers: the ``add_subparsers()`` object of the main parser.

    Returns:
        The three subcommand parsers (the caller adds its own common options).
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
                        help="coarse scales kept from the source (default: the model's; "
                             "without one, ~30%% of them)")
    change.add_argument("--revise", type=revise_arg, default=argparse.SUPPRESS,
                        metavar="NATS|off",
                        help="of the kept coarse scales, regenerate the tokens the target "
                             "class disfavours by more than this many nats (default: the "
                             f"model's, else {DEFAULT_CLASS_REVISE:g}; off: keep them whole)")
    add_model_args(change)
    add_sampling_args(change)
    _add_edit_args(change)
    change.set_defaults(func=_edit)
    return [inpaint, out, change]
