"""Class accuracy and FD of generated samples against the sampler's settings: how to pick them.

For each combination of ``--cfg``, ``--top-k``, ``--top-p``, mask-step guidance ratio and
refinement setting (default: the model's own values, and its own ``steps`` and ``steps=0``;
the model's own values are always in the grid), generates ``--samples`` images with labels
cycling over the classes that have training images (the labels and seeds of
``benchmarks/quality.py``) and reports the domain classifier's class / category / style
accuracy, class-balanced, next to its accuracy on real held-out images (from ``--data``, or
``--real-balanced`` when the dataset is not at hand). With ``--data`` every row also gets the
domain-FD to the held-out images (as ``benchmarks/quality.py`` computes it), its bootstrap
spread, and a paired bootstrap against the model's own sampler at the same refinement setting
(same labels and seeds: the share of resamples where the row's FD is lower). The chosen values
go into the model's ``config.json`` (``sampler``); ``benchmarks/quality.py`` then measures the
whole report at that setting (with other seeds: a grid's best row is biased low).

    python -m benchmarks.cfg_sweep --cfg 1.5 2 3 --top-k 900 0 --samples 1020 \\
        --device cuda --data data/emoji64/emoji64.npz --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.class_map import ClassMap
from benchmarks.classifier import (
    accuracy_report,
    load_classifier,
    load_npz_split,
    predict_logits,
)
from benchmarks.quality import (
    Setting,
    cycling_labels,
    fd,
    generate_set,
    paired_fd_bootstrap,
)
from hmar_core import Pipeline
from hmar_core.schedules import default_schedule

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("cfg_sweep")


def _grid(given: list, own: object) -> list:
    """The model's own value first, then the given ones (each once)."""
    return list(dict.fromkeys([own, *given]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "assets" / "hmar-emoji64")
    parser.add_argument("--classifier", type=Path,
                        default=ROOT / "benchmarks" / "models" / "emoji-classifier")
    parser.add_argument("--data", type=Path, default=None,
                        help="emoji64.npz: real held-out accuracy and features (FD), and the "
                        "classes present")
    parser.add_argument("--label-data", type=Path, default=None,
                        help="a model trained on finer classes (needs --data): the .npz of "
                        "python -m train.data fine it was trained on")
    parser.add_argument("--real-balanced", type=float, default=None,
                        help="the classifier's class-balanced accuracy on real held-out images "
                        "(when --data is not given; no FD then)")
    parser.add_argument("--cfg", type=float, nargs="+", default=[])
    parser.add_argument("--top-k", type=int, nargs="+", default=[], help="0 disables")
    parser.add_argument("--top-p", type=float, nargs="+", default=[], help="0 or 1 disables")
    parser.add_argument("--steps", nargs="+", default=None,
                        help="refinement settings: ints (the steps knob) or 'official' (the "
                        "official default schedule); default: the model's own and 0")
    parser.add_argument("--mask-cfg-ratio", type=float, nargs="+", default=[],
                        help="guidance of the mask steps as a fraction of cfg")
    parser.add_argument("--samples", type=int, default=1020)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bootstrap-reps", type=int, default=50,
                        help="paired bootstrap resamples per row (each costs two FDs on the "
                        "host: 40 rows x 200 took minutes)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if (args.data is None) == (args.real_balanced is None):
        parser.error("give exactly one of --data and --real-balanced")
    device = torch.device(args.device)
    pipe = Pipeline.from_pretrained(args.model, device=device)
    own = pipe.sampler_config
    classifier, _ = load_classifier(args.classifier, device)
    val_feats = val_y = None
    class_map = ClassMap(pipe.class_names, pipe.class_names)
    if args.data is not None:
        _, train_y, data_names = load_npz_split(args.data, "train")
        val_x, val_y, _ = load_npz_split(args.data, "val")
        class_map = ClassMap.for_model(pipe.class_names, data_names, args.label_data)
        val_logits, val_feats = predict_logits(classifier, val_x)
        val_feats = val_feats.numpy()
        real = accuracy_report(val_logits, val_y)["class_top1_balanced"]
        present = np.flatnonzero(np.bincount(train_y, minlength=len(data_names)) > 0)
    else:
        real = args.real_balanced
        config = json.loads((args.model / "config.json").read_text())
        empty = set(config.get("empty_classes", ()))  # classes without training images
        present = np.array([c for c in range(pipe.num_classes) if c not in empty])
    if classifier.cfg.num_classes != class_map.data_classes:
        parser.error(f"the classifier has {classifier.cfg.num_classes} classes, the model "
                     f"{pipe.num_classes}: give --data (and --label-data for finer classes)")
    labels = cycling_labels(args.samples, present)
    model_labels = class_map.to_model(labels, args.seed)  # what is asked of the model
    steps = args.steps if args.steps is not None else [str(own.steps or 0), "0"]
    settings = {}
    for step in dict.fromkeys(steps):
        if step == "official":
            settings[step] = Setting(step, default_schedule(pipe.patch_nums), None, "")
        elif step.isdigit():
            settings[step] = Setting(f"steps{step}", None, int(step), "")
        else:
            parser.error(f"--steps takes ints or 'official', got {step!r}")
    grid = itertools.product(_grid(args.cfg, own.cfg), _grid(args.top_k, own.top_k),
                             _grid(args.top_p, own.top_p),
                             _grid(args.mask_cfg_ratio, own.mask_cfg_ratio))
    rows, feats, baseline = [], [], {}
    for cfg, top_k, top_p, ratio in grid:
        pipe.sampler_config = pipe.sampler_settings(cfg=cfg, top_k=top_k, top_p=top_p,
                                                    mask_cfg_ratio=ratio)
        is_own = (cfg, top_k, top_p, ratio) == (own.cfg, own.top_k, own.top_p,
                                                own.mask_cfg_ratio)
        for step, setting in settings.items():
            start = time.perf_counter()
            images = generate_set(pipe, model_labels, setting, args.seed, args.batch_size)
            logits, features = predict_logits(classifier, images)
            acc = accuracy_report(logits, labels)
            row = {"cfg": cfg, "top_k": top_k, "top_p": top_p, "mask_cfg_ratio": ratio,
                   "steps": step, "model_own": is_own, "seconds": time.perf_counter() - start,
                   "ratio": acc["class_top1_balanced"] / real if real > 0 else float("nan"),
                   **acc}
            if val_feats is not None:
                row["fd"] = fd(features.numpy(), labels, val_feats, val_y)
                feats.append(features.numpy())
                if is_own:
                    baseline[step] = len(rows)
            rows.append(row)
            logger.info("cfg %g top-k %d top-p %g mask ratio %g steps %s: class %.3f (ratio "
                        "%.3f), FD %s", cfg, top_k, top_p, ratio, step,
                        acc["class_top1_balanced"], row["ratio"],
                        f"{row['fd']:.2f}" if "fd" in row else "-")
    if val_feats is not None:  # paired against the model's own sampler, same steps
        for i, row in enumerate(rows):
            boot = paired_fd_bootstrap(feats[i], feats[baseline[row["steps"]]], labels,
                                       val_feats, val_y, args.bootstrap_reps, args.seed)
            row["fd_std"] = boot["fd_on_std"]
            row["fd_vs_own"] = {k: boot[k] for k in ("diff_mean", "diff_std",
                                                      "fraction_on_better")}
    print(f"real held-out class accuracy (balanced): {real:.4f}; {args.samples} samples per row")
    print(markdown(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": str(args.model), "device": str(device),
                                         "seed": args.seed, "real_balanced": real,
                                         "bootstrap_reps": args.bootstrap_reps,
                                         "samples": args.samples, "rows": rows}, indent=1))
    return 0


def markdown(rows: list[dict]) -> str:
    """The sweep as a Markdown table (FD columns when the rows have them)."""
    with_fd = any("fd" in row for row in rows)
    head = "| cfg | top-k | top-p | mask-step cfg ratio | steps | class acc | ratio to real |"
    head += " FD ± bootstrap | FD − own (row better in) |" if with_fd else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        line = (f"| {row['cfg']:g} | {row['top_k']} | {row['top_p']:g} | "
                f"{row['mask_cfg_ratio']:g} | {row['steps']}{' (own)' if row['model_own'] else ''}"
                f" | {row['class_top1_balanced']:.3f} | {row['ratio']:.3f} |")
        if with_fd:
            vs = row["fd_vs_own"]
            line += (f" {row['fd']:.2f} ± {row['fd_std']:.2f} | {vs['diff_mean']:+.2f} ± "
                     f"{vs['diff_std']:.2f} ({100 * vs['fraction_on_better']:.0f} %) |")
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
