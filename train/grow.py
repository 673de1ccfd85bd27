"""Grow a trained model deeper: new shared blocks that start as the identity.

``python -m train.grow --model assets/hmar-emoji64 --out runs/grown --insert 4 9`` writes a
model folder whose transformer has two more base blocks (new indices 4 and 9 of the base
stack; the old blocks keep their order around them) and computes exactly what the old one
computed: every new block's AdaLN gate rows (``gamma1``, ``gamma2``: the first ``2·C`` outputs
of its ``ada_lin``) are zero, so both of its residual branches add nothing until training moves
them, while its other weights have the official initialisation (``hmar_core.init``), so the
gates get gradients from the first step. Training then continues from the grown folder with
``--init-from`` (``scripts/train_demo_gpu.sh``: ``INIT_MODEL`` plus the new depth), so more
capacity starts from a trained model instead of from scratch.

Everything else is copied: the tokenizer, the sampler settings, the class names, the heads,
embeddings and branch blocks. The CLI prints, on stdout, the ``--set`` flags that make a
training config's transformer equal the grown one (its depth and drop-path rate; the training
YAML describes the old model), for ``python -m train.hmar --init-from <grown> ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from hmar_core import Pipeline
from hmar_core.checkpoint import load_into
from hmar_core.init import init_transformer_
from hmar_core.transformer import HMARTransformer

from .export import derived_config, export_pipeline

__all__ = ["cli", "grow_folder", "grow_transformer", "training_overrides"]

logger = logging.getLogger(__name__)


def _check_positions(insert: Sequence[int], base: int) -> list[int]:
    """Sorted new-block indices in the grown base stack of ``base + len(insert)`` blocks."""
    positions = sorted(insert)
    grown = base + len(positions)
    if not positions:
        raise ValueError("insert at least one block")
    if len(set(positions)) != len(positions):
        raise ValueError(f"insert positions must differ, got {list(insert)}")
    if positions[0] < 0 or positions[-1] >= grown:
        raise ValueError(f"insert positions must be in [0, {grown - 1}] (the grown base stack "
                         f"of {grown} blocks), got {list(insert)}")
    return positions


@torch.no_grad()
def grow_transformer(transformer: HMARTransformer, insert: Sequence[int],
                     seed: int = 0) -> HMARTransformer:
    """A deeper copy of ``transformer`` (float32, CPU) with identity blocks at ``insert``.

    Args:
        transformer: the trained model (not modified).
        insert: indices of the new blocks in the grown base stack.
        seed: seeds the new blocks' initialisation.

    Raises:
        ValueError: positions out of range or repeated.
    """
    cfg = transformer.cfg
    base = len(transformer.base_blocks)
    positions = _check_positions(insert, base)
    grown_cfg = dataclasses.replace(cfg, depth=cfg.depth + len(positions))
    grown = init_transformer_(HMARTransformer(grown_cfg),
                              torch.Generator().manual_seed(seed)).float().eval()
    old = {k: v.detach().float().cpu() for k, v in transformer.state_dict().items()}
    state = grown.state_dict()
    # old base block i becomes grown base block moved[i]
    moved = [index for index in range(base + len(positions)) if index not in positions]
    for key, value in old.items():
        if key.startswith("base_blocks."):
            _, index, rest = key.split(".", 2)
            key = f"base_blocks.{moved[int(index)]}.{rest}"
        state[key] = value
    width = cfg.width
    for index in positions:
        state[f"base_blocks.{index}.ada_lin.weight"][: 2 * width] = 0.0
        state[f"base_blocks.{index}.ada_lin.bias"][: 2 * width] = 0.0
    load_into(grown, state, "grown transformer")
    logger.info("grew %s base blocks to %s (new at %s)", base, base + len(positions), positions)
    return grown


def grow_folder(model: str | Path, out: str | Path, insert: Sequence[int], *, seed: int = 0,
                dtype: torch.dtype | None = None) -> Path:
    """Write the grown model of folder ``model`` to folder ``out`` (see the module docstring).

    ``dtype``: of the saved weights (default float32, so that the copied weights keep every
    bit of the source's).
    """
    pipe = Pipeline.from_pretrained(model, device="cpu", engine="reference")
    grown = grow_transformer(pipe.transformer, insert, seed)
    folder = export_pipeline(pipe.tokenizer, grown, out, class_names=pipe.class_names,
                             sampler_config=pipe.sampler_config, dtype=dtype)
    derived_config(model, folder, take=("transformer",))  # the source's titles, ...
    return folder


def training_overrides(folder: str | Path) -> list[str]:
    """``--set`` flags for ``train.hmar`` that give its transformer config the depth and
    drop-path rate of the model in ``folder`` (what growing changes or keeps from the source,
    where the training YAML's defaults would differ)."""
    saved = json.loads((Path(folder) / "config.json").read_text())["transformer"]
    return ["--set", f"transformer.depth={saved['depth']}",
            "--set", f"transformer.drop_path_rate={saved['drop_path_rate']!r}"]


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.grow", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder to grow")
    parser.add_argument("--out", required=True, help="folder for the grown model")
    parser.add_argument("--insert", type=int, nargs="+", required=True,
                        help="indices of the new blocks in the grown base stack")
    parser.add_argument("--seed", type=int, default=0, help="seeds the new blocks' init")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of the saved weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        folder = grow_folder(args.model, args.out, args.insert, seed=args.seed,
                             dtype=getattr(torch, args.dtype))
    except ValueError as err:  # CheckpointError included
        parser.error(str(err))
    logger.info("wrote %s", folder)
    print(" ".join(training_overrides(folder)))  # noqa: T201 (the CLI's output, for scripts)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
