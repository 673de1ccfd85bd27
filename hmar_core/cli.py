"""Command line: ``python -m hmar_core generate | convert | inpaint | outpaint | edit``.

Argument parsing lives here only; the library receives dataclasses and plain values.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .engine import ENGINE_CHOICES
from .official import OFFICIAL_KINDS, load_official
from .pipeline import Pipeline

__all__ = ["DEFAULT_MODEL", "load_pipeline", "main", "save_grid"]

logger = logging.getLogger(__name__)

#: The bundled demo model (see assets/MODEL_CARD.md).
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "assets" / "hmar-emoji64"


def load_pipeline(
    checkpoint: str | Path | None,
    vae: str | Path | None = None,
    hmar: str | Path | None = None,
    device: str = "cpu",
    engine: str = "auto",
    kind: str | None = None,
) -> Pipeline:
    """Our folder (default: the bundled model), or an official ``--vae``/``--hmar`` pair,
    on the given engine (``auto``: the fast engine; see :func:`hmar_core.engine.resolve_engine`).
    """
    if vae is not None or hmar is not None:
        if vae is None or hmar is None:
            raise ValueError("official checkpoints need both --vae and --hmar")
        return load_official(vae, hmar, kind=kind, device=device, engine=engine)
    folder = Path(checkpoint) if checkpoint is not None else DEFAULT_MODEL
    return Pipeline.from_pretrained(folder, device=device, engine=engine)


def save_grid(images: torch.Tensor, path: str | Path, columns: int | None = None) -> Path:
    """Save (B, 3, H, W) images in [0, 1] as one PNG grid."""
    from PIL import Image

    batch, _, height, width = images.shape
    columns = columns or min(batch, 8)
    rows = -(-batch // columns)
    grid = torch.ones(3, rows * height, columns * width)
    for i, image in enumerate(images.float().cpu()):
        r, c = divmod(i, columns)
        grid[:, r * height:(r + 1) * height, c * width:(c + 1) * width] = image
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="model folder (default: the bundled demo model)")
    parser.add_argument("--vae", help="official VQVAE .pth (with --hmar)")
    parser.add_argument("--hmar", help="official HMAR / VAR .pth (with --vae)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                        help="fast (half precision on GPUs), reference (float32 modules) or "
                             "auto (fast; default)")
    parser.add_argument("--kind", choices=OFFICIAL_KINDS,
                        help="what a blocks.* --hmar file holds: hmar-stage1 or var")


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None,
                        help="masked refinement steps per coarse scale (0 = fastest)")


def _generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    pipe = load_pipeline(args.checkpoint, args.vae, args.hmar, args.device, args.engine,
                         args.kind)
    class_ids = None if args.class_id is None else [
        _class_index(pipe, c) for c in args.class_id for _ in range(args.num)]
    batch = args.num if class_ids is None else None
    with tqdm(total=len(pipe.patch_nums), desc="scales", unit="scale") as bar:
        out = pipe.generate(class_ids, seed=args.seed, cfg=args.cfg, top_k=args.top_k,
                            top_p=args.top_p, steps=args.steps, batch_size=batch,
                            on_scale=lambda state: bar.update(1))
    path = save_grid(out.images, args.out, args.columns)
    logger.info("saved %d images to %s (seed %d, classes %s)", out.images.shape[0], path,
                out.seed, out.labels.tolist())
    return 0


def _class_index(pipe: Pipeline, value: str) -> int:
    if value.lstrip("-").isdigit():
        return int(value)
    if value in pipe.class_names:
        return pipe.class_names.index(value)
    raise ValueError(f"unknown class {value!r}; use an id or one of {pipe.class_names[:10]}...")


def _convert(args: argparse.Namespace) -> int:
    pipe = load_official(args.vae, args.hmar, mask_path=args.mask, kind=args.kind,
                         n_layers_train=args.n_layers_train, engine="reference")
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    pipe.save_pretrained(args.out, dtype=dtype)
    logger.info("wrote %s (%s)", args.out, pipe.transformer.cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hmar_core", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images into a PNG grid")
    _add_model_args(gen)
    _add_sampling_args(gen)
    gen.add_argument("--class", dest="class_id", action="append",
                     help="class id or name (repeatable); default: random classes")
    gen.add_argument("--num", type=int, default=1, help="images per class (or total if random)")
    gen.add_argument("--columns", type=int, default=None)
    gen.add_argument("--out", default="grid.png")
    gen.set_defaults(func=_generate)

    conv = sub.add_parser("convert", help="official .pth → our safetensors folder")
    conv.add_argument("--vae", required=True)
    conv.add_argument("--hmar", required=True, help="HMAR, stage-1 or VAR .pth")
    conv.add_argument("--mask", help="stage-2 .pth to merge with a stage-1 file")
    conv.add_argument("--kind", choices=OFFICIAL_KINDS,
                      help="what a blocks.* --hmar file holds: hmar-stage1 or var")
    conv.add_argument("--n-layers-train", type=int, default=8)
    conv.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    conv.add_argument("--out", required=True)
    conv.set_defaults(func=_convert)

    try:
        from .cli_edit import add_edit_subcommands
    except ImportError:  # editing commands not installed in this build
        pass
    else:
        add_edit_subcommands(sub, _add_model_args, _add_sampling_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, with a one-line error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, CheckpointError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
