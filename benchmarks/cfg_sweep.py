"""Class accuracy of generated samples against the guidance scale: how to pick a model's cfg.

For each ``--cfg`` value, mask-step guidance ratio and refinement setting (default: the
model's own schedule and ``steps=0``), generates ``--samples`` images with labels cycling over
the classes that have training images (the labels and seeds of ``benchmarks/quality.py``) and
reports the domain
classifier's class / category / style accuracy, class-balanced, next to its accuracy on real
held-out images (from ``--data``, or ``--real-balanced`` when the dataset is not at hand, e.g.
on a GPU machine). The chosen value goes into the model's ``config.json`` (``sampler.cfg``);
``benchmarks/quality.py`` then measures FD and memorisation at that setting.

    python -m benchmarks.cfg_sweep --cfg 3 4 5 6 --samples 1020 \\
        --device cuda --real-balanced 0.5514 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.classifier import (
    accuracy_report,
    load_classifier,
    load_npz_split,
    predict_logits,
)
from benchmarks.quality import Setting, cycling_labels, generate_set
from hmar_core import Pipeline
from hmar_core.schedules import default_schedule

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("cfg_sweep")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "assets" / "hmar-emoji64")
    parser.add_argument("--classifier", type=Path,
                        default=ROOT / "benchmarks" / "models" / "emoji-classifier")
    parser.add_argument("--data", type=Path, default=None,
                        help="emoji64.npz: real held-out accuracy and the classes present")
    parser.add_argument("--real-balanced", type=float, default=None,
                        help="the classifier's class-balanced accuracy on real held-out images "
                        "(when --data is not given)")
    parser.add_argument("--cfg", type=float, nargs="+", required=True)
    parser.add_argument("--steps", nargs="+", default=None,
                        help="refinement settings: ints (the steps knob) or 'official' (the "
                        "official default schedule); default: the model's own and 0")
    parser.add_argument("--mask-cfg-ratio", type=float, nargs="+", default=None,
                        help="guidance of the mask steps as a fraction of cfg (default: the "
                        "model's own)")
    parser.add_argument("--samples", type=int, default=1020)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if (args.data is None) == (args.real_balanced is None):
        parser.error("give exactly one of --data and --real-balanced")
    device = torch.device(args.device)
    pipe = Pipeline.from_pretrained(args.model, device=device)
    classifier, _ = load_classifier(args.classifier, device)
    if args.data is not None:
        train_y = load_npz_split(args.data, "train")[1]
        val_x, val_y, _ = load_npz_split(args.data, "val")
        real = accuracy_report(predict_logits(classifier, val_x)[0], val_y)["class_top1_balanced"]
        present = np.flatnonzero(np.bincount(train_y, minlength=pipe.num_classes) > 0)
    else:
        real = args.real_balanced
        config = json.loads((args.model / "config.json").read_text())
        empty = set(config.get("empty_classes", ()))  # classes without training images
        present = np.array([c for c in range(pipe.num_classes) if c not in empty])
    labels = cycling_labels(args.samples, present)
    steps = args.steps if args.steps is not None else [str(pipe.sampler_config.steps or 0), "0"]
    ratios = args.mask_cfg_ratio or [pipe.sampler_config.mask_cfg_ratio]
    settings = {}
    for step in dict.fromkeys(steps):
        if step == "official":
            settings[step] = Setting(step, default_schedule(pipe.patch_nums), None, "")
        elif step.isdigit():
            settings[step] = Setting(f"steps{step}", None, int(step), "")
        else:
            parser.error(f"--steps takes ints or 'official', got {step!r}")
    rows = []
    for cfg in args.cfg:
        for ratio in ratios:
            pipe.sampler_config = pipe.sampler_settings(cfg=cfg, mask_cfg_ratio=ratio)
            for step, setting in settings.items():
                start = time.perf_counter()
                images = generate_set(pipe, labels, setting, args.seed, args.batch_size)
                acc = accuracy_report(predict_logits(classifier, images)[0], labels)
                rows.append({"cfg": cfg, "mask_cfg_ratio": ratio, "steps": step,
                             "seconds": time.perf_counter() - start,
                             "ratio": acc["class_top1_balanced"] / real, **acc})
                logger.info("cfg %g mask ratio %g steps %s: class %.3f (ratio %.3f), category "
                            "%.3f, style %.3f", cfg, ratio, step, acc["class_top1_balanced"],
                            rows[-1]["ratio"], acc["category_top1_balanced"],
                            acc["style_top1_balanced"])
    print(f"real held-out class accuracy (balanced): {real:.4f}; {args.samples} samples per row")
    print("| cfg | mask-step cfg ratio | steps | class acc | ratio to real | category acc | "
          "style acc |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['cfg']:g} | {row['mask_cfg_ratio']:g} | {row['steps']} | "
              f"{row['class_top1_balanced']:.3f} | {row['ratio']:.3f} | "
              f"{row['category_top1_balanced']:.3f} | {row['style_top1_balanced']:.3f} |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"real_balanced": real, "samples": args.samples,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
