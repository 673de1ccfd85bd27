"""Command line: ``python -m hmar_core generate | convert | inpaint | outpaint | edit``.

Argument parsing lives here only; the library receives dataclasses and plain values. Every
error ends the command with one line on stderr and a non-zero exit (2: bad input, 1: an
internal error, 130: interrupted); ``--debug`` adds the traceback. Outputs are checked before
any work starts (:mod:`hmar_core.cli_outputs`). See docs/CLI.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from PIL import Image

from .cli_common import DEFAULT_MODEL, add_model_args, add_sampling_args, class_index
from .cli_common import load_pipeline as load_pipeline
from .cli_edit import add_edit_subcommands
from .cli_outputs import check_image_outputs, check_model_folder_output
from .images import MAX_INPUT_PIXELS
from .official import OFFICIAL_KINDS, load_official

__all__ = ["DEFAULT_MODEL", "MAX_GRID_PIXELS", "build_parser", "grid_layout", "load_pipeline",
           "main", "save_grid"]

logger = logging.getLogger(__name__)

#: Largest image grid ``generate`` writes (64 MP, the input limit): more images, more runs.
MAX_GRID_PIXELS = MAX_INPUT_PIXELS


def grid_layout(count: int, columns: int | None, height: int, width: int) -> tuple[int, int]:
    """``(rows, columns)`` of a grid of ``count`` images of height×width.

    ``columns`` defaults to ``min(count, 8)`` and is clamped to ``count``.

    Raises:
        ValueError: ``count`` or ``columns`` below 1, or a grid above :data:`MAX_GRID_PIXELS`.
    """
    if count < 1:
        raise ValueError(f"need at least one image, got {count}")
    if columns is not None and columns < 1:
        raise ValueError(f"--columns must be at least 1, got {columns}")
    columns = min(columns or 8, count)
    rows = -(-count // columns)
    pixels = rows * columns * height * width
    if pixels > MAX_GRID_PIXELS:
        raise ValueError(f"a grid of {count} images of {width}x{height} is "
                         f"{pixels / 2**20:.1f} MP, above the {MAX_GRID_PIXELS // 2**20} MP "
                         "limit: generate fewer images per run")
    return rows, columns


def save_grid(images: torch.Tensor, path: str | Path, columns: int | None = None) -> Path:
    """Save (B, 3, H, W) images in [0, 1] as one image grid (layout: :func:`grid_layout`)."""
    batch, _, height, width = images.shape
    rows, columns = grid_layout(batch, columns, height, width)
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels_BHWC = pixels.permute(0, 2, 3, 1).cpu().numpy()
    grid = np.full((rows * height, columns * width, 3), 255, dtype=np.uint8)
    for i, image in enumerate(pixels_BHWC):
        r, c = divmod(i, columns)
        grid[r * height:(r + 1) * height, c * width:(c + 1) * width] = image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def _model_inputs(args: argparse.Namespace) -> list[str | None]:
    return [args.checkpoint, args.vae, args.hmar]


def _generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.num < 1:
        raise ValueError(f"--num must be at least 1, got {args.num}")
    if args.columns is not None and args.columns < 1:
        raise ValueError(f"--columns must be at least 1, got {args.columns}")
    check_image_outputs([("--out", args.out)], _model_inputs(args), args.overwrite)
    pipe = load_pipeline(args.checkpoint, args.vae, args.hmar, args.device, args.engine,
                         args.kind, args.fp8)
    class_ids = None if args.class_id is None else [
        class_index(pipe, c) for c in args.class_id for _ in range(args.num)]
    count = args.num if class_ids is None else len(class_ids)
    grid_layout(count, args.columns, pipe.image_size, pipe.image_size)  # refuse before the run
    batch = args.num if class_ids is None else None
    with tqdm(total=len(pipe.patch_nums), desc="scales", unit="scale") as bar:
        out = pipe.generate(class_ids, seed=args.seed, cfg=args.cfg, top_k=args.top_k,
                            top_p=args.top_p, steps=args.steps, batch_size=batch,
                            on_scale=lambda state: bar.update(1))
    path = save_grid(out.images, args.out, args.columns)
    logger.info("saved %d images to %s (seed %d, classes %s)", out.images.shape[0], path,
                out.seed, out.labels.tolist())
    return 0


def _convert(args: argparse.Namespace) -> int:
    check_model_folder_output(args.out, [args.vae, args.hmar, args.mask], args.overwrite)
    pipe = load_official(args.vae, args.hmar, mask_path=args.mask, kind=args.kind,
                         n_layers_train=args.n_layers_train, engine="reference")
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    pipe.save_pretrained(args.out, dtype=dtype)
    logger.info("wrote %s (%s)", args.out, pipe.transformer.cfg)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``prog: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_common(parser: argparse.ArgumentParser, top: bool = False) -> None:
    default = False if top else argparse.SUPPRESS  # a subcommand keeps the top-level value
    parser.add_argument("-v", "--verbose", "--debug", dest="verbose", action="store_true",
                        default=default, help="debug logging, with tracebacks of errors")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = _Parser(prog="python -m hmar_core", description=__doc__)
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images into an image grid")
    add_model_args(gen)
    add_sampling_args(gen)
    gen.add_argument("--class", dest="class_id", action="append",
                     help="class id or name (repeatable); default: random classes")
    gen.add_argument("--num", type=int, default=1, help="images per class (or total if random)")
    gen.add_argument("--columns", type=int, default=None,
                     help="grid columns (>= 1; default and most: the number of images, up to 8 "
                          "by default)")
    gen.add_argument("--out", default="grid.png", help="output image (.png, .jpg, ...)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_common(gen)
    gen.set_defaults(func=_generate)

    conv = sub.add_parser("convert", help="official .pth → our safetensors folder")
    conv.add_argument("--vae", required=True)
    conv.add_argument("--hmar", required=True, help="HMAR, stage-1 or VAR .pth")
    conv.add_argument("--mask", help="stage-2 .pth to merge with a stage-1 file")
    conv.add_argument("--kind", choices=OFFICIAL_KINDS,
                      help="what a blocks.* --hmar file holds: hmar-stage1 or var")
    conv.add_argument("--n-layers-train", type=int, default=8)
    conv.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    conv.add_argument("--out", required=True, help="model folder to write")
    conv.add_argument("--overwrite", action="store_true",
                      help="replace a model already in --out")
    _add_common(conv)
    conv.set_defaults(func=_convert)

    for command in add_edit_subcommands(sub):
        _add_common(command)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _log_warning(message: Warning | str, category: type[Warning], *_: object,
                 **__: object) -> None:
    # PIL warns from 89 MP on; our 64 MP limit refuses those images with a clearer line.
    level = logging.DEBUG if issubclass(category, Image.DecompressionBombWarning) else (
        logging.WARNING)
    logger.log(level, "%s: %s", category.__name__, _one_line(Warning(message)))


def _run(args: argparse.Namespace) -> int:
    debug = bool(args.verbose)
    with warnings.catch_warnings():
        warnings.showwarning = _log_warning  # one log line per warning, restored on exit
        try:
            return args.func(args)
        except KeyboardInterrupt:
            logger.error("interrupted")
            return 130
        except (ValueError, OSError) as err:  # bad input: CheckpointError is a ValueError
            logger.error("%s", _one_line(err), exc_info=debug)
            return 2
        except Exception as err:  # noqa: BLE001 - the CLI's last line: never a bare traceback
            logger.error("internal error: %s: %s (run with --debug for the traceback)",
                         type(err).__name__, _one_line(err), exc_info=debug)
            return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
