"""A trained model with finer classes: every new class starts as its parent class.

``python -m train.split_classes --model assets/hmar-emoji64 --data
data/emoji64-fine/emoji64-fine.npz --out runs/fine-init`` writes a model folder whose class
table has one row per class of the relabelled dataset (``python -m train.data fine``): the row
of a fine class is a copy of its parent's row (``class_parents`` of the ``.npz``) and the null
class keeps its row, so for every fine class the new model computes exactly what the old one
computed for its parent (tested: same logits and tokens). Training on the fine labels then
continues from it (``--init-from``), and each fine class moves away from its parent from there.
The CLI prints the ``--set`` flag that gives the training YAML the new class count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hmar_core import Pipeline
from hmar_core.checkpoint import load_into
from hmar_core.transformer import HMARTransformer

from .data.emoji_fine import parent_names
from .export import derived_config, export_pipeline

__all__ = ["cli", "split_class_table", "split_folder"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def split_class_table(transformer: HMARTransformer, parents: Sequence[int]) -> HMARTransformer:
    """A copy of ``transformer`` (float32, CPU) with ``len(parents)`` classes, class ``i``
    starting as class ``parents[i]`` of the source; the null class keeps its row.

    Raises:
        ValueError: no classes, or a parent outside the source's classes.
    """
    old_classes = transformer.cfg.num_classes
    if not parents:
        raise ValueError("give at least one class")
    if min(parents) < 0 or max(parents) >= old_classes:
        raise ValueError(f"parents must be class ids in [0, {old_classes - 1}]")
    cfg = dataclasses.replace(transformer.cfg, num_classes=len(parents))
    with torch.device("meta"):
        split = HMARTransformer(cfg)
    state = {k: v.detach().float().cpu() for k, v in transformer.state_dict().items()}
    table = state["class_embed.weight"]  # (old_classes + 1, width); the last row: null
    rows = torch.tensor([*parents, old_classes])
    state["class_embed.weight"] = table[rows].clone()
    split = split.to_empty(device="cpu")
    load_into(split, state, "transformer with split classes")
    return split.float().eval()


def split_folder(model: str | Path, data: str | Path, out: str | Path, *,
                 dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` with the classes of the relabelled dataset ``data`` to folder ``out``.

    Raises:
        ValueError: the dataset has no ``class_parents``, or its parents' names are not the
            model's class names.
    """
    with np.load(data, allow_pickle=False) as arrays:
        if "class_parents" not in arrays.files:
            raise ValueError(f"{data} has no class_parents: relabel it with python -m "
                             "train.data fine")
        names = [str(n) for n in arrays["class_names"]]
        parents = [int(p) for p in arrays["class_parents"]]
    pipe = Pipeline.from_pretrained(model, device="cpu", engine="reference")
    if len(parents) != len(names):
        raise ValueError(f"{data}: {len(names)} class names but {len(parents)} parents")
    for name, parent, wanted in zip(names, parents, parent_names(names)):
        known = pipe.class_names[parent] if parent < len(pipe.class_names) else None
        if known != wanted:
            raise ValueError(f"{data}: class {name!r} has parent {parent}, which {model} "
                             f"names {known!r}")
    split = split_class_table(pipe.transformer, parents)
    folder = export_pipeline(pipe.tokenizer, split, out, class_names=names,
                             sampler_config=pipe.sampler_config, dtype=dtype)
    # the source's other entries; its per-class ones do not carry over
    derived_config(model, folder, take=("transformer", "class_names"),
                   drop=("class_titles", "empty_classes"))
    logger.info("split %d classes into %d", pipe.transformer.cfg.num_classes, len(names))
    return folder


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.split_classes",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder with the coarse classes")
    parser.add_argument("--data", required=True, help=".npz of python -m train.data fine")
    parser.add_argument("--out", required=True, help="folder for the model with fine classes")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of the saved weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        folder = split_folder(args.model, args.data, args.out, dtype=getattr(torch, args.dtype))
    except (ValueError, OSError) as err:  # CheckpointError included
        parser.error(str(err))
    saved = json.loads((folder / "config.json").read_text())["transformer"]
    logger.info("wrote %s", folder)
    print(f"--set transformer.num_classes={saved['num_classes']}")  # noqa: T201 (for scripts)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
