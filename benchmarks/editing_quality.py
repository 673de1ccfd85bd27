"""Editing quality on held-out images: seam score, class-edit success, CPU time per edit.

Usage::

    python -m benchmarks.editing_quality --model assets/hmar-emoji64 \\
        --images data/emoji64.npz --classifier classifier.pt --num 100 --out editing.json

* ``--images``: an ``.npz`` written by ``python -m train.data`` (keys ``images``, ``labels``,
  ``splits``, ``split_names``; the ``val`` split is used when present) or a folder of images
  (a parent folder named like one of the model's classes gives the label). Without it the
  model generates its own (labelled) test images, which is only a smoke test.
* ``--classifier``: a TorchScript file (``torch.jit.load``) or ``module:function`` returning a
  callable; it gets (B, 3, H, W) float images in [0, 1] and returns (B, num_classes) logits or
  (B,) class ids. Without it the class-edit metric is skipped.

Metrics (one JSON report):

* **seam score** = mean Sobel gradient magnitude on a 2-pixel band around the mask boundary
  divided by the mean over the rest of the image; reported for the edits and for the originals
  with the same masks (``seam_excess`` = edited / original: 1.0 means the boundary is as smooth
  as natural content, above 1 a visible seam).
* **outpaint seam score** (``--modes outpaint``): each image is outpainted by 100 % on all four
  sides (the app's 100 %-all-sides case: a 3× canvas, ~22 model windows at the model's own
  resolution). The seams are the borders between the original and each window's regenerated
  area (``window_masks``); the score is the gradient on a 2-pixel band around them over the
  gradient elsewhere, for the outpainted image and for the held-out image itself (resized to
  the canvas) with the same seams: ``outpaint_seam_excess`` = their ratio.
* **class-edit success** = fraction of whole-image class edits (random target ≠ source label,
  at the model's class-edit defaults, ``Pipeline.class_edit_defaults()``, unless
  ``--class-strength`` / ``--revise`` say otherwise) that the classifier assigns to the
  target class; with several
  ``--class-strength`` values, one row per strength in ``class_edit_by_strength`` (the same
  images, targets and seeds at every strength; ``predicted`` = the class of each edit).
  ``--cfg`` sets the guidance of every edit (default: the model's).
* **seconds per edit** on this machine (``--device``, default CPU), mean and median.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from benchmarks.class_map import ClassMap
from hmar_core import EditOptions, Pipeline
from hmar_core.cli_edit import revise_arg
from hmar_core.editing import outpaint
from hmar_core.editing.outpaint import window_masks
from hmar_core.images import to_rgb

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("editing_quality")
Classifier = Callable[[torch.Tensor], torch.Tensor]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def random_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random edit mask: a rectangle (half the time) or a thick brush stroke, bool (H, W)."""
    mask = np.zeros((height, width), np.uint8)
    if rng.random() < 0.5:
        h = int(rng.integers(max(1, height // 8), max(2, height // 2)))
        w = int(rng.integers(max(1, width // 8), max(2, width // 2)))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        mask[top:top + h, left:left + w] = 1
    else:
        points = rng.integers(0, [width, height], size=(int(rng.integers(2, 6)), 2))
        thickness = int(rng.integers(max(2, min(height, width) // 16),
                                     max(3, min(height, width) // 6)))
        cv2.polylines(mask, [points.astype(np.int32)], False, 1, thickness=thickness)
    return mask.astype(bool)


def seam_ratio(rgb: np.ndarray, mask: np.ndarray, band: int = 2) -> float:
    """Mean gradient magnitude on the mask boundary band / mean elsewhere."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    magnitude = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    ring = (cv2.dilate(mask.astype(np.uint8), kernel) > 0) & (
        cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE) == 0)
    if not ring.any() or ring.all():
        return float("nan")
    return float(magnitude[ring].mean() / max(float(magnitude[~ring].mean()), 1e-6))


def label_seam_ratio(rgb: np.ndarray, labels: np.ndarray, band: int = 2) -> float:
    """Mean gradient magnitude on the borders between regions of ``labels`` / elsewhere."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    magnitude = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    edges = np.zeros(labels.shape, np.uint8)
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= labels[1:, :] != labels[:-1, :]
    ring = cv2.dilate(edges, np.ones((2 * band, 2 * band), np.uint8)) > 0
    if not ring.any() or ring.all():
        return float("nan")
    return float(magnitude[ring].mean() / max(float(magnitude[~ring].mean()), 1e-6))


def outpaint_seams(pipe: Pipeline, images: Sequence[np.ndarray], args: argparse.Namespace
                   ) -> dict:
    """The outpaint seam score (module docstring) and its time per image."""
    seams, seams_original, seconds, windows = [], [], [], []
    for index, rgb in enumerate(images):
        h, w = rgb.shape[:2]
        start = time.perf_counter()
        result = outpaint(pipe, rgb, left=w, right=w, top=h, bottom=h,
                          options=EditOptions(seed=args.seed + index, steps=args.steps,
                                              feather=args.feather, cfg=args.cfg),
                          overlap=args.overlap)
        seconds.append(time.perf_counter() - start)
        canvas = np.asarray(result.images[0].convert("RGB"))
        known = np.zeros(canvas.shape[:2], bool)
        known[h:2 * h, w:2 * w] = True
        labels = np.zeros(known.shape, np.int32)
        for number, mask in enumerate(window_masks(known, list(result.windows), args.overlap)):
            labels[mask] = number + 1
        reference = cv2.resize(rgb, canvas.shape[1::-1], interpolation=cv2.INTER_CUBIC)
        seams.append(label_seam_ratio(canvas, labels))
        seams_original.append(label_seam_ratio(reference, labels))
        windows.append(len(result.windows))
        logger.info("outpaint %d/%d: %d windows, seam %.3f (original %.3f), %.1f s",
                    index + 1, len(images), windows[-1], seams[-1], seams_original[-1],
                    seconds[-1])
    seam, original = float(np.nanmean(seams)), float(np.nanmean(seams_original))
    return {"outpaint_images": len(seams), "outpaint_overlap": args.overlap,
            "outpaint_windows_mean": statistics.fmean(windows),
            "outpaint_seam_score": seam, "outpaint_seam_score_original": original,
            "outpaint_seam_excess": seam / original,
            "seconds_per_outpaint_mean": statistics.fmean(seconds)}


def load_classifier(spec: str, device: torch.device) -> Classifier:
    """A TorchScript file, or ``module:function`` (called once, returning the classifier)."""
    if Path(spec).is_file():
        model = torch.jit.load(spec, map_location=device).eval()
        return lambda images: model(images)
    module_name, _, function = spec.partition(":")
    if not function:
        raise ValueError(f"--classifier {spec!r}: not a file and not module:function")
    return getattr(importlib.import_module(module_name), function)()


def predict(classifier: Classifier, images: list[Image.Image], device: torch.device) -> list[int]:
    batch = torch.stack([torch.from_numpy(np.array(i.convert("RGB"))).permute(2, 0, 1)
                         for i in images]).to(device=device, dtype=torch.float32) / 255.0
    with torch.no_grad():
        out = classifier(batch)
    return (out.argmax(-1) if out.dim() == 2 else out).flatten().tolist()


def load_images(source: str | None, pipe: Pipeline, num: int, seed: int
                ) -> tuple[list[np.ndarray], list[int | None]]:
    """Held-out images and their labels (``None`` where unknown)."""
    if source is None:
        logger.warning("no --images: using images the model generates itself (smoke test only)")
        classes = [i % pipe.num_classes for i in range(num)]
        images = []
        for start in range(0, num, 16):
            out = pipe.generate(classes[start:start + 16], seed=seed + start)
            images += list((out.images.clamp(0, 1) * 255).round().byte()
                           .permute(0, 2, 3, 1).cpu().numpy())
        return images, list(classes)
    path = Path(source)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            keep = np.ones(len(data["images"]), bool)
            if "split_names" in data and "val" in [str(s) for s in data["split_names"]]:
                keep = data["splits"] == [str(s) for s in data["split_names"]].index("val")
            images, labels = data["images"][keep], data["labels"][keep].astype(int)
        order = np.random.default_rng(seed).permutation(len(images))[:num]
        return [images[i] for i in order], [int(labels[i]) for i in order]
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    order = np.random.default_rng(seed).permutation(len(files))[:num]
    names = {name: i for i, name in enumerate(pipe.class_names)}
    return ([to_rgb(Image.open(files[i])) for i in order],
            [names.get(files[i].parent.name) for i in order])


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.model:
        from hmar_core.cli import load_pipeline

        pipe = load_pipeline(args.model, device=args.device)
    else:
        logger.warning("no --model: a tiny random pipeline (numbers are meaningless)")
        pipe = Pipeline.random().to(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels = load_images(args.images, pipe, args.num, args.seed)
    if len(images) < args.num:
        logger.warning("only %d images available (asked for %d)", len(images), args.num)
    # class edits at the model's defaults unless the flags say otherwise
    defaults = pipe.class_edit_defaults()
    if "revise" not in vars(args):
        args.revise = defaults.revise
    report: dict = {"model": args.model or "random-tiny", "images": len(images),
                    "device": str(device), "steps": args.steps, "feather": args.feather,
                    "cfg": args.cfg, "revise": args.revise}
    if "outpaint" in args.modes:
        report.update(outpaint_seams(pipe, images, args))
    if "inpaint" in args.modes:
        report.update(inpaint_seams(pipe, images, args))
    if args.classifier:
        report.update(class_edits_by_strength(pipe, images, labels, args, device))
    else:
        logger.info("no --classifier: class-edit success skipped")
    return report


def class_edits_by_strength(pipe: Pipeline, images: Sequence[np.ndarray],
                            labels: Sequence[int | None], args: argparse.Namespace,
                            device: torch.device) -> dict:
    """Class edits at every ``--class-strength`` (default: the model's default strength,
    :meth:`Pipeline.class_edit_defaults`); the default strength's row is also reported on its
    own."""
    classifier = load_classifier(args.classifier, device)
    data_names = pipe.class_names
    if args.images and Path(args.images).suffix == ".npz":
        with np.load(args.images, allow_pickle=False) as data:
            data_names = [str(n) for n in data["class_names"]]
    class_map = ClassMap.for_model(pipe.class_names, data_names, args.label_data)
    default = pipe.class_edit_defaults().strength
    strengths = args.class_strength or [default]
    by_strength = {strength: class_edits(pipe, classifier, list(images), list(labels), strength,
                                         args.seed, args.steps, device, cfg=args.cfg,
                                         revise=args.revise, class_map=class_map)
                   for strength in strengths}
    first = by_strength[default if default in by_strength else strengths[0]]
    return {"class_edit_success": first["success"], "class_edits": first["edits"],
            "class_edit_strength": first["strength"],
            "seconds_per_class_edit_mean": first["seconds_mean"],
            "class_edit_by_strength": list(by_strength.values())}


def inpaint_seams(pipe: Pipeline, images: Sequence[np.ndarray], args: argparse.Namespace
                  ) -> dict:
    """The inpaint seam score (random masks) and the time per edit."""
    rng = np.random.default_rng(args.seed)
    seams, seams_original, seconds = [], [], []
    for index, rgb in enumerate(images):
        mask = random_mask(rng, *rgb.shape[:2])
        start = time.perf_counter()
        edited = pipe.inpaint(rgb, mask, seed=args.seed + index, steps=args.steps,
                              feather=args.feather, cfg=args.cfg)
        seconds.append(time.perf_counter() - start)
        seams.append(seam_ratio(np.asarray(edited), mask))
        seams_original.append(seam_ratio(rgb, mask))
    seam, original = float(np.nanmean(seams)), float(np.nanmean(seams_original))
    return {"seam_score": seam, "seam_score_original": original, "seam_excess": seam / original,
            "seconds_per_edit_mean": statistics.fmean(seconds),
            "seconds_per_edit_median": statistics.median(seconds)}


def class_edits(pipe: Pipeline, classifier: Classifier, images: list[np.ndarray],
                labels: list[int | None], strength: int, seed: int, steps: int | None,
                device: torch.device, cfg: float | None = None,
                revise: float | None = None, class_map: ClassMap | None = None) -> dict:
    """Whole-image class edits to a random other class at one strength: the fraction that the
    classifier assigns to the target class (targets and seeds fixed by ``seed``), and the
    class it assigned to each edit. ``cfg``: the guidance of the edits (``None``: the
    model's); ``revise``: :attr:`EditOptions.revise` (``None``: coarse scales kept whole);
    ``class_map``: when the model's classes are finer than the classifier's, the target is a
    classifier class and the edit asks for one of its model classes."""
    rng = np.random.default_rng(seed + 1)
    targets = class_map.data_classes if class_map is not None else pipe.num_classes
    hits, seconds, predicted = 0, [], []
    for index, (rgb, label) in enumerate(zip(images, labels)):
        target = int(rng.choice([c for c in range(targets) if c != label]))
        asked = target if class_map is None else int(class_map.to_model([target],
                                                                         seed + index)[0])
        start = time.perf_counter()
        result = pipe.edit(rgb, None, EditOptions(class_id=asked, seed=seed + index,
                                                  steps=steps, strength=strength, cfg=cfg,
                                                  revise=revise))
        seconds.append(time.perf_counter() - start)
        predicted.append(predict(classifier, [result.image], device)[0])
        hits += predicted[-1] == target
    edits = len(images)
    logger.info("class edits at strength %d: %d/%d reach the target", strength, hits, edits)
    return {"strength": strength, "success": hits / max(edits, 1), "edits": edits,
            "seconds_mean": statistics.fmean(seconds) if seconds else float("nan"),
            "predicted": predicted}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: a tiny random pipeline)")
    parser.add_argument("--images", help="held-out .npz or image folder")
    parser.add_argument("--label-data", default=None,
                        help="a model trained on finer classes: the .npz of python -m "
                             "train.data fine it was trained on (class edits pick its classes "
                             "by their image counts)")
    parser.add_argument("--classifier", help="TorchScript file or module:function")
    parser.add_argument("--num", type=int, default=100, help="number of images (>= 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="refinement steps")
    parser.add_argument("--feather", type=int, default=8)
    parser.add_argument("--cfg", type=float, default=None,
                        help="class guidance of every edit (default: the model's)")
    parser.add_argument("--revise", type=revise_arg, default=argparse.SUPPRESS, metavar="NATS|off",
                        help="class edits: regenerate the kept coarse tokens the target class "
                             "disfavours by more than this many nats (EditOptions.revise; "
                             "default: the model's; off: keep them whole)")
    parser.add_argument("--class-strength", type=int, nargs="+", default=None,
                        help="strength(s) of the class edits (default: the model's default)")
    parser.add_argument("--modes", nargs="+", choices=("inpaint", "outpaint"),
                        default=["inpaint", "outpaint"], help="seam scores to measure")
    parser.add_argument("--overlap", type=int, default=None,
                        help="outpaint overlap band in pixels (default: 1/8 window; 0: none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", help="write the JSON report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = run(args)
    text = json.dumps(report, indent=2)
    logger.info("report:\n%s", text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
