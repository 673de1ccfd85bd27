"""Command line: ``python -m train.data emoji --out data/emoji64 [--size 64] [--raw data/raw]``;
``python -m train.data fine --data data/emoji64 --out data/emoji64-fine [--min-images 20]``."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from .emoji import SPLITS, EmojiBuildConfig, build_emoji_dataset
from .emoji_fine import write_fine_dataset
from .fetch import ChecksumError

logger = logging.getLogger("train.data")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    emoji = commands.add_parser(
        "emoji", help="build the offline emoji demo dataset (Fluent 3D, Noto, Twemoji)"
    )
    emoji.add_argument("--out", type=Path, required=True, help="output folder")
    emoji.add_argument("--size", type=int, default=64, help="image side in pixels (64)")
    emoji.add_argument("--raw", type=Path, default=Path("data/raw"),
                       help="cache of npm tarballs and extracted files (data/raw)")
    emoji.add_argument("--val-fraction", type=float, default=0.05,
                       help="fraction of base emoji held out for validation (0.05)")
    emoji.add_argument("--npz", nargs="?", type=Path, const=Path(""), default=None,
                       help="also write a compressed .npz (default path: <out>/<out name>.npz)")
    emoji.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                       help="processes for decoding/resizing")
    emoji.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    fine = commands.add_parser(
        "fine", help="relabel a built emoji dataset: classes split by Unicode subcategory"
    )
    fine.add_argument("--data", type=Path, required=True,
                      help="folder of python -m train.data emoji --npz (its .npz, images.csv)")
    fine.add_argument("--out", type=Path, required=True, help="output folder")
    fine.add_argument("--min-images", type=int, default=20,
                      help="training images a subcategory needs to be a class (20)")
    fine.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        Process exit status (2 after a one-line error for bad flags, files or downloads).
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "fine":
        try:
            write_fine_dataset(args.data, args.out, args.min_images)
        except (ValueError, OSError, KeyError) as err:
            logger.error("%s", " ".join(str(err).split()) or type(err).__name__)
            return 2
        return 0
    npz = args.npz
    if npz is not None and npz == Path(""):
        npz = args.out / f"{args.out.name}.npz"
    try:
        config = EmojiBuildConfig(
            out=args.out, raw=args.raw, size=args.size, val_fraction=args.val_fraction,
            npz=npz, workers=args.workers,
        )
        with logging_redirect_tqdm():
            result = build_emoji_dataset(config)
    except (ValueError, OSError, ChecksumError) as err:  # bad flags, files, downloads
        logger.error("%s", " ".join(str(err).split()) or type(err).__name__)
        return 2
    for entry in result.labels["classes"]:
        counts = entry["counts"]
        logger.info("%2d %-24s %s", entry["id"], entry["name"],
                    "  ".join(f"{split} {counts[split]:5d}" for split in (*SPLITS, "total")))
    logger.info("total: %s", result.labels["counts"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
