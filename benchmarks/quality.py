"""Quality metrics of an emoji64 HMAR model (issue 6): reproducible, CPU or GPU.

Usage::

    python -m benchmarks.quality --model assets/hmar-emoji64 \\
        --classifier benchmarks/models/emoji-classifier [--device cpu|cuda] [--samples 1020] \\
        [--json out.json] [--markdown] [--quick] [--grid DIR] [--timing-only]

Metrics (fixed seeds; ``--data`` is the ``emoji64.npz`` of ``python -m train.data emoji``):

* **Tokenizer PSNR**: encode + decode of the held-out (``val``) images, PSNR over [0, 1]
  images, mean over images (target >= 26 dB).
* **Class accuracy** of ``--samples`` generated images (class ids cycling over the classes that
  have training images, so ~20 per class for 1020) under the domain classifier
  (``benchmarks/classifier.py``), against its accuracy on the real ``val`` images. The generated
  set is class-balanced and the real one is not (``person`` is ~1/3 of it), so the headline
  ratio uses *class-balanced* accuracy (mean per-class recall) on both sides (target >= 0.8);
  plain accuracies and 17-category / style accuracies are reported too.
* **Domain-FD**: Fréchet distance of the classifier's penultimate (256-d) features of the
  generated images vs the real ``val`` images, with masked refinement ON (``--refine``) and OFF
  (``steps=0``), same labels and seeds. Both sides are weighted to class balance (each class
  has the same total weight; the generated set's composition differs from the real one's).
  Floors with the same estimator: a ``train`` subset with the generated set's exact labels
  vs ``val`` (same sample size: what a perfect generator of training images would score) and
  the whole ``train`` split vs ``val``. Unweighted FDs are in the JSON.
* **Memorisation**: distance of each generated image to its nearest training image, as the
  RMS pixel difference in [0, 1] units after area-downsampling to 32x32 (and, in the JSON, in
  classifier-feature space), compared with the same for held-out real images (class-balanced
  means; ratio ~1: no memorisation, << 1: copying). ``near_copies`` = fraction of generated
  images closer to the training set than the 5th percentile of held-out images (~0.05 expected).
* **CPU timing** (``--threads``, default 2): median of ``--timing-reps`` single 64 px
  generations (batch 1, the model's default sampler settings, and with refinement ON) and of
  single edits (inpaint of a centre 32x32 box of a held-out image, with the editor's default
  refinement steps and with ``steps=0``), after one warm-up each (target <= 1 s). The load
  average is recorded: on a shared machine the times are upper bounds.
* The ON - OFF domain-FD difference comes with a paired bootstrap (``fd_on_minus_off_bootstrap``)
  so that a difference within the sampling noise is not read as an effect.
* **Speed/quality curve** (``--curve 0 1 2 4 8``): the same metrics for every ``steps=N``
  (same labels and seeds), the device seconds per image of each set (and with timing, the CPU
  median of a batch-1 generation), a paired bootstrap of each N against ``steps=0`` and of each
  N against the previous one (does FD rise from 1 to 2 to 4 steps beyond its noise?). Settings
  whose schedules coincide (e.g. the model default and ``steps=2``) are generated once.
  ``--mask-cfg-ratio`` overrides the model's guidance of the mask steps (to choose it).

Cost: generation dominates (two sets of ``--samples`` images). On 2 CPU cores 1020 samples per
setting take tens of minutes; ``--device cuda`` runs the sets on the GPU and still times on CPU.

``--quick`` (a smoke run, a few minutes on 2 busy cores): 50 samples, 64 PSNR images, 2,000
training images for the feature-space statistics, 3 timing repetitions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks._quality_metrics import (
    balanced_mean,
    class_balance_weights,
    frechet_distance,
    gaussian_stats,
    nearest_neighbour_distances,
    psnr,
    to_pixels32,
)
from benchmarks.class_map import ClassMap
from benchmarks.classifier import (
    accuracy_report,
    load_classifier,
    load_npz_split,
    predict_logits,
    to_float,
)
from benchmarks.inference import engine_option
from benchmarks.paths import ROOT, shown
from hmar_core import Pipeline
from hmar_core.schedules import Schedule, default_schedule

logger = logging.getLogger("quality")

DEFAULT_DATA = ROOT / "data" / "emoji64" / "emoji64.npz"
DEFAULT_CLASSIFIER = ROOT / "benchmarks" / "models" / "emoji-classifier"
PSNR_TARGET_DB = 26.0
ACCURACY_RATIO_TARGET = 0.8
SECONDS_TARGET = 1.0
NEAR_COPY_QUANTILE = 0.05
FLOOR_DRAWS = 5
BOOTSTRAP_REPS = 200


@dataclass
class Setting:
    """One sampler setting to evaluate: a name, the schedule arguments and a description."""

    name: str
    mask_schedule: Schedule | None
    steps: int | None
    description: str

    def kwargs(self) -> dict[str, Any]:
        return {"mask_schedule": self.mask_schedule, "steps": self.steps}


def resolve_settings(pipe: Pipeline, refine: str) -> list[Setting]:
    """The refinement ON and OFF settings.

    ``refine``: ``auto`` (the model's default sampler schedule if it refines, else the official
    default schedule), ``official`` (official default schedule) or an int (``steps=N``).
    """
    off = Setting("refine_off", None, 0, "steps=0 (pure next-scale)")
    if refine.isdigit():
        if int(refine) == 0:
            raise ValueError("--refine 0 is the OFF setting; pick >= 1, official or auto")
        on = Setting("refine_on", None, int(refine), f"steps={int(refine)}")
    elif refine in ("auto", "official"):
        model_default = pipe.resolve_schedule()
        if refine == "auto" and any(len(entry) > 1 for entry in model_default):
            on = Setting("refine_on", model_default, None, "the model's default schedule")
        else:
            on = Setting("refine_on", default_schedule(pipe.patch_nums), None,
                         "official default schedule (1 step at scale 1, 3 at scale 2)")
    else:
        raise ValueError(f"--refine must be auto, official or an int, got {refine!r}")
    for setting in (on, off):
        setting_schedule = pipe.resolve_schedule(setting.mask_schedule, setting.steps)
        setting.description += f"; extra passes {sum(len(e) - 1 for e in setting_schedule)}"
    return [on, off]


def curve_settings(pipe: Pipeline, steps: Sequence[int]) -> list[Setting]:
    """One setting ``steps_N`` per value of ``--curve`` (distinct, sorted)."""
    out = []
    for n in sorted(set(steps)):
        if n < 0:
            raise ValueError(f"--curve steps must be >= 0, got {n}")
        extra = sum(len(e) - 1 for e in pipe.resolve_schedule(None, n))
        out.append(Setting(f"steps_{n}", None, n, f"steps={n}; extra passes {extra}"))
    return out


def cycling_labels(count: int, classes: Sequence[int]) -> np.ndarray:
    """``count`` class ids cycling over ``classes``."""
    classes = np.asarray(classes, dtype=np.int64)
    return classes[np.arange(count) % len(classes)]


def matched_subset(labels: np.ndarray, pool_labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices into ``pool_labels`` with the same label multiset as ``labels`` (drawn without
    replacement per class while the class has enough, then with replacement)."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        slots = np.flatnonzero(labels == c)
        pool = np.flatnonzero(pool_labels == c)
        if len(pool) == 0:
            raise ValueError(f"no real images of class {c}")
        replace = len(pool) < len(slots)
        out[slots] = rng.choice(pool, size=len(slots), replace=replace)
    return out


def stratified_subset(labels: np.ndarray, total: int, seed: int, min_per_class: int = 8
                      ) -> np.ndarray:
    """Sorted indices of about ``total`` samples, each class in proportion but with at least
    ``min(count, min_per_class)`` samples."""
    rng = np.random.default_rng(seed)
    fraction = total / len(labels)
    picks = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        take = min(len(pool), max(min_per_class, round(len(pool) * fraction)))
        picks.append(rng.choice(pool, size=take, replace=False))
    return np.sort(np.concatenate(picks))


@torch.no_grad()
def tokenizer_psnr(pipe: Pipeline, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Per-image PSNR (dB) of encode + decode of uint8 (N, H, W, 3) images, on the
    pipeline's engine (what an edit does to the kept region)."""
    out = []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start:start + batch_size]).to(pipe.device, pipe.dtype)
        tokens = pipe.backend.encode(x * 2 - 1)
        recon = pipe.decode_latent(pipe.tokenizer.fhat_from_tokens(tokens)[-1])
        out.append(psnr(recon.clamp(0, 1), x.float()).cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def generate_set(pipe: Pipeline, labels: np.ndarray, setting: Setting, seed: int,
                 batch_size: int) -> torch.Tensor:
    """Generated images (N, 3, 64, 64) float32 CPU in [0, 1]; batch ``i`` uses ``seed + i``."""
    images = []
    start_time = time.perf_counter()
    for i, start in enumerate(range(0, len(labels), batch_size)):
        chunk = labels[start:start + batch_size].tolist()
        out = pipe.generate(chunk, seed=seed + i, **setting.kwargs())
        images.append(out.images.float().clamp(0, 1).cpu())
        logger.info("%s: %d/%d images (%.0f s)", setting.name, start + len(chunk), len(labels),
                    time.perf_counter() - start_time)
    return torch.cat(images)


def fd(feats_a: np.ndarray, labels_a: np.ndarray | None, feats_b: np.ndarray,
       labels_b: np.ndarray | None) -> float:
    """Fréchet distance of two feature sets, each class-balanced when its labels are given."""
    wa = None if labels_a is None else class_balance_weights(labels_a)
    wb = None if labels_b is None else class_balance_weights(labels_b)
    return frechet_distance(*gaussian_stats(feats_a, wa), *gaussian_stats(feats_b, wb))


def paired_fd_bootstrap(feats_on: np.ndarray, feats_off: np.ndarray, labels: np.ndarray,
                        ref_feats: np.ndarray, ref_labels: np.ndarray, reps: int, seed: int
                        ) -> dict[str, float]:
    """Bootstrap of FD(ON) - FD(OFF): resample the paired generated sets with replacement
    (the same indices for both: same labels and seeds), class-balance the resample, keep the
    reference fixed. ``fraction_on_better`` = share of resamples where ON has the lower FD."""
    rng = np.random.default_rng(seed)
    ref = gaussian_stats(ref_feats, class_balance_weights(ref_labels))
    on_values, diffs = [], []
    for _ in range(reps):
        idx = rng.choice(len(labels), size=len(labels), replace=True)
        weights = class_balance_weights(labels[idx])
        on = frechet_distance(*gaussian_stats(feats_on[idx], weights), *ref)
        off = frechet_distance(*gaussian_stats(feats_off[idx], weights), *ref)
        on_values.append(on)
        diffs.append(on - off)
    diffs_arr = np.asarray(diffs)
    return {"reps": reps, "fd_on_std": float(np.std(on_values)),
            "diff_mean": float(diffs_arr.mean()), "diff_std": float(diffs_arr.std()),
            "fraction_on_better": float(np.mean(diffs_arr < 0))}


@dataclass
class RealSets:
    """Features, labels and pixels of the real images that every generated set is scored
    against (``val`` and ``train``), and the classifier's report on ``val``."""

    val_feats: np.ndarray
    val_y: np.ndarray
    train_feats: torch.Tensor
    train_feats_y: np.ndarray
    val_pix: torch.Tensor
    train_pix: torch.Tensor
    train_x: np.ndarray
    real: dict[str, Any]


def evaluate_setting(pipe: Pipeline, classifier: torch.nn.Module, labels: np.ndarray,
                     setting: Setting, args: argparse.Namespace, ref: RealSets,
                     model_labels: np.ndarray | None = None
                     ) -> tuple[dict[str, Any], np.ndarray]:
    """Generate one setting's set and score it: (report entry, classifier features).
    ``labels``: the data classes it is scored in; ``model_labels``: the model's class of
    each image when the model's classes are finer (default: ``labels``)."""
    t0 = time.perf_counter()
    asked = labels if model_labels is None else model_labels
    images = generate_set(pipe, asked, setting, args.seed, args.batch_size)
    seconds = time.perf_counter() - t0
    logits, feats = predict_logits(classifier, images)
    acc = accuracy_report(logits, labels)
    real = ref.real
    entry = {
        "description": setting.description, "seconds": seconds,
        "seconds_per_image": seconds / len(labels), "accuracy": acc,
        "accuracy_ratio": acc["class_top1_balanced"] / real["class_top1_balanced"],
        "accuracy_ratio_plain": acc["class_top1"] / real["class_top1"],
        "category_ratio": acc["category_top1_balanced"] / real["category_top1_balanced"],
        "style_ratio": acc["style_top1_balanced"] / real["style_top1_balanced"],
        "fd_val": fd(feats.numpy(), labels, ref.val_feats, ref.val_y),
        "fd_val_unweighted": fd(feats.numpy(), None, ref.val_feats, None),
        "fd_train": fd(feats.numpy(), labels, ref.train_feats.numpy(), ref.train_feats_y),
        "memorisation_pixels32": memorisation(to_pixels32(images), labels, ref.val_pix,
                                              ref.val_y, ref.train_pix, rms=True, tiny=0.01),
        "memorisation_features": memorisation(feats, labels, torch.from_numpy(ref.val_feats),
                                              ref.val_y, ref.train_feats, rms=False,
                                              tiny=1e-6),
    }
    logger.info("%s: balanced acc %.3f (ratio %.3f), FD %.2f, NN ratio %.3f (%.0f s)",
                setting.name, acc["class_top1_balanced"], entry["accuracy_ratio"],
                entry["fd_val"], entry["memorisation_pixels32"]["ratio_balanced_mean"], seconds)
    if args.grid:
        save_grid(images, labels, Path(args.grid) / f"{setting.name}.png")
        save_nn_pairs(images, ref.train_x, ref.train_pix,
                      Path(args.grid) / f"{setting.name}_nn.png")
    return entry, feats.numpy()


def curve_report(report: dict[str, Any], steps: Sequence[int], gen_feats: dict[str, np.ndarray],
                 labels: np.ndarray, val_feats: np.ndarray, val_y: np.ndarray, reps: int,
                 seed: int) -> dict[str, Any]:
    """The speed/quality curve: one row per ``steps`` value, paired FD bootstraps of every N
    against ``steps=0`` (``fraction_on_better``: N better) and against the previous N."""
    ordered = sorted(set(steps))
    rows = []
    for n in ordered:
        entry = report["generated"][f"steps_{n}"]
        rows.append({"steps": n, "fd_val": entry["fd_val"],
                     "accuracy_ratio": entry["accuracy_ratio"],
                     "category_ratio": entry["category_ratio"],
                     "nn_ratio": entry["memorisation_pixels32"]["ratio_balanced_mean"],
                     "identical": entry["memorisation_pixels32"]["generated"]["identical"],
                     "seconds_per_image": entry["seconds_per_image"]})
    out: dict[str, Any] = {"rows": rows, "vs_steps0": {}, "vs_previous": {}}
    for previous, n in zip(ordered, ordered[1:]):
        for key, base in (("vs_steps0", ordered[0]), ("vs_previous", previous)):
            boot = paired_fd_bootstrap(gen_feats[f"steps_{n}"], gen_feats[f"steps_{base}"],
                                       labels, val_feats, val_y, reps, seed)
            boot["verdict"] = fd_verdict(boot["fraction_on_better"]).replace(
                "ON", f"steps={n}").replace("OFF", f"steps={base}")
            out[key][f"{n}_vs_{base}"] = boot
    return out


def fd_verdict(fraction_on_better: float, confidence: float = 0.95) -> str:
    """``ON better`` / ``OFF better`` when that many bootstrap resamples agree, else no call."""
    if fraction_on_better >= confidence:
        return "ON better"
    if fraction_on_better <= 1 - confidence:
        return "OFF better"
    return "no significant difference"


def nn_summary(dist: np.ndarray, labels: np.ndarray, threshold: float, tiny: float
               ) -> dict[str, float]:
    """Class-balanced mean, median, min of NN distances, the fraction below ``threshold`` and
    the number of (near-)identical ones (distance <= ``tiny``)."""
    return {"balanced_mean": balanced_mean(dist, labels), "median": float(np.median(dist)),
            "min": float(dist.min()), "near_copies": float(np.mean(dist < threshold)),
            "identical": int(np.sum(dist <= tiny))}


def memorisation(gen_vecs: torch.Tensor, gen_labels: np.ndarray, val_vecs: torch.Tensor,
                 val_labels: np.ndarray, train_vecs: torch.Tensor, rms: bool, tiny: float
                 ) -> dict[str, Any]:
    """NN distances to the training set of generated vs held-out vectors (see module doc);
    ``identical`` counts distances <= ``tiny``."""
    gen_d = nearest_neighbour_distances(gen_vecs, train_vecs, rms=rms)[0].numpy()
    val_d = nearest_neighbour_distances(val_vecs, train_vecs, rms=rms)[0].numpy()
    threshold = float(np.quantile(val_d, NEAR_COPY_QUANTILE))
    gen = nn_summary(gen_d, gen_labels, threshold, tiny)
    val = nn_summary(val_d, val_labels, threshold, tiny)
    return {"generated": gen, "heldout": val, "near_copy_threshold": threshold,
            "ratio_balanced_mean": gen["balanced_mean"] / val["balanced_mean"],
            "ratio_median": gen["median"] / val["median"]}


def _median_seconds(fn: Callable[[], object], reps: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def cpu_timing(pipe: Pipeline, on: Setting, image: np.ndarray, reps: int, seed: int,
               curve: Sequence[int] = ()) -> dict[str, Any]:
    """Median seconds of batch-1 generations and centre-box inpaints on the CPU pipeline
    (and of a batch-1 generation at every ``steps`` of ``curve``)."""
    size = pipe.image_size
    mask = np.zeros((size, size), dtype=bool)
    mask[size // 4:3 * size // 4, size // 4:3 * size // 4] = True
    picture = Image.fromarray(image)
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "reps": reps,
                              "load_average_before": os.getloadavg()}
    jobs = {
        "generate_default": lambda: pipe.generate(0, seed=seed),
        "generate_refine_on": lambda: pipe.generate(0, seed=seed, **on.kwargs()),
        "inpaint_default": lambda: pipe.inpaint(picture, mask, seed=seed),
        "inpaint_steps0": lambda: pipe.inpaint(picture, mask, seed=seed, steps=0),
    }
    for n in sorted(set(curve)):
        jobs[f"generate_steps_{n}"] = lambda n=n: pipe.generate(0, seed=seed, steps=n)
    for name, job in jobs.items():
        median, times = _median_seconds(job, reps)
        result[name] = {"median_s": median, "min_s": min(times),
                        "times_s": [round(t, 4) for t in times]}
        logger.info("timing %s: median %.3f s", name, median)
    result["load_average_after"] = os.getloadavg()
    return result


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, value, target, status) rows of the headline numbers."""
    rows: list[tuple[str, str, str, str]] = []
    tok = report["tokenizer"]
    rows.append((f"tokenizer PSNR, val (n={tok['n']})", f"{tok['psnr_db_mean']:.2f} dB",
                 f">= {PSNR_TARGET_DB:g} dB", "pass" if tok["pass"] else "FAIL"))
    real = report["classifier_real_val"]
    rows.append((f"classifier on real val (n={real['n']}): balanced / plain, 51-class",
                 f"{real['class_top1_balanced']:.3f} / {real['class_top1']:.3f}", "", ""))
    rows.append(("classifier on real val: balanced 17-category / style",
                 f"{real['category_top1_balanced']:.3f} / {real['style_top1_balanced']:.3f}",
                 "", ""))
    for name, gen in report["generated"].items():
        acc = gen["accuracy"]
        rows.append((f"{name}: generated accuracy (n={acc['n']}) 51-class / 17-category",
                     f"{acc['class_top1_balanced']:.3f} / {acc['category_top1_balanced']:.3f}",
                     "", ""))
        rows.append((f"{name}: accuracy ratio gen / real (51-class, balanced)",
                     f"{gen['accuracy_ratio']:.3f}", f">= {ACCURACY_RATIO_TARGET:g}",
                     "pass" if gen["accuracy_ratio"] >= ACCURACY_RATIO_TARGET else "FAIL"))
        rows.append((f"{name}: 17-category ratio gen / real (balanced)",
                     f"{gen['category_ratio']:.3f}", "", ""))
        rows.append((f"{name}: domain-FD vs val", f"{gen['fd_val']:.2f}", "lower is better",
                     ""))
        mem = gen["memorisation_pixels32"]
        rows.append((f"{name}: NN-to-train distance ratio gen / held-out (pixels 32x32)",
                     f"{mem['ratio_balanced_mean']:.3f} (near copies "
                     f"{mem['generated']['near_copies']:.3f}, identical "
                     f"{mem['generated']['identical']}; held-out identical "
                     f"{mem['heldout']['identical']})", "~1 (<< 1: copying)", ""))
    ref = report["fd_reference"]
    rows.append((f"domain-FD floor: train subset (same labels, size) vs val, "
                 f"{ref['train_matched_draws']} draws", f"{ref['train_matched_vs_val']:.2f} "
                 f"+- {ref['train_matched_vs_val_std']:.2f}", "", ""))
    rows.append((f"domain-FD floor: all train (n={ref['train_n']}) vs val",
                 f"{ref['train_all_vs_val']:.2f}", "", ""))
    boot = report["fd_on_minus_off_bootstrap"]
    rows.append(("masked refinement and domain-FD", f"{report['refinement_fd_verdict']} "
                 f"(ON - OFF = {on_off_diff(report):.2f}; paired bootstrap "
                 f"{boot['diff_mean']:.2f} +- {boot['diff_std']:.2f}, ON better in "
                 f"{boot['fraction_on_better']:.0%})", "", ""))
    timing = report.get("timing")
    if timing:
        for key in ("generate_default", "generate_refine_on", "inpaint_default",
                    "inpaint_steps0"):
            median, fastest = timing[key]["median_s"], timing[key]["min_s"]
            rows.append((f"CPU {timing['threads']} threads: {key} (median of {timing['reps']})",
                         f"{median:.3f} s (min {fastest:.3f} s)", f"<= {SECONDS_TARGET:g} s",
                         "pass" if median <= SECONDS_TARGET else "FAIL"))
    return rows


def on_off_diff(report: dict[str, Any]) -> float:
    gen = report["generated"]
    return gen["refine_on"]["fd_val"] - gen["refine_off"]["fd_val"]


def markdown_block(report: dict[str, Any]) -> str:
    """A Markdown section for the model card."""
    lines = ["### Quality (`benchmarks/quality.py`)", "",
             f"Model `{report['model']}`, classifier `{report['classifier']}`, device "
             f"{report['device']}, seed {report['seed']}, {report['samples']} generated samples "
             f"per setting; refinement ON = {report['settings']['refine_on']}, "
             f"OFF = {report['settings']['refine_off']}; sampler {report['sampler']}.", "",
             "| metric | value | target | status |", "|---|---|---|---|"]
    lines += [f"| {m} | {v} | {t} | {s} |" for m, v, t, s in summary_rows(report)]
    lines += ["", "Accuracies are class-balanced (mean per-class recall); domain-FD uses the "
              "classifier's 256-d pooled features with class-balanced Gaussian fits; "
              "memorisation compares nearest-training-image RMS pixel distances at 32x32 "
              "(identical: RMS <= 0.01; a few held-out emoji share their artwork with a "
              "training emoji, e.g. some flags and family glyphs)."]
    if report.get("timing"):
        load = report["timing"]["load_average_before"]
        lines.append(f"Timing on {report['machine']} (load average {load[0]:.1f} before the "
                     "timed runs; on a machine shared with other busy processes, 2-thread "
                     "torch runs can be several times slower than alone: the min is the best "
                     "estimate of the uncontended time).")
    return "\n".join(lines)


def print_table(report: dict[str, Any]) -> None:
    rows = [("metric", "value", "target", "status"), *summary_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


def load_pipe(model: Path, device: torch.device | None, mask_cfg_ratio: float | None,
              engine_options: dict[str, object] | None = None) -> Pipeline:
    """The model's pipeline, with its mask-step guidance ratio replaced when one is given
    (on the fast engine with these options when any are given, else on the default engine)."""
    if engine_options:
        pipe = Pipeline.from_pretrained(model, device=device, engine="fast", **engine_options)
    else:
        pipe = Pipeline.from_pretrained(model, device=device)
    if mask_cfg_ratio is not None:
        pipe.sampler_config = dataclasses.replace(pipe.sampler_config,
                                                  mask_cfg_ratio=mask_cfg_ratio)
    return pipe


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run every metric and return the JSON report."""
    start = time.perf_counter()
    device = torch.device(args.device)
    pipe = load_pipe(args.model, device, args.mask_cfg_ratio, dict(args.engine_option))
    classifier, _ = load_classifier(args.classifier, device)
    train_x, train_y, data_names = load_npz_split(args.data, "train")
    val_x, val_y, _ = load_npz_split(args.data, "val")
    if classifier.cfg.num_classes != len(data_names):
        raise ValueError(f"classifier has {classifier.cfg.num_classes} classes, the data "
                         f"{len(data_names)}")
    class_map = ClassMap.for_model(pipe.class_names, data_names, args.label_data)
    settings = resolve_settings(pipe, args.refine) + curve_settings(pipe, args.curve or [])
    report: dict[str, Any] = {
        "model": str(args.model), "classifier": shown(args.classifier), "data": str(args.data),
        "device": str(device), "engine": repr(pipe.backend), "seed": args.seed,
        "samples": args.samples, "quick": args.quick,
        "torch": torch.__version__, "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs", "threads": torch.get_num_threads(),
        "sampler": pipe.sampler_config.to_dict(),
        "settings": {s.name: s.description for s in settings},
        "classifier_config_metrics": classifier.cfg.metrics,
    }

    if args.timing_only:
        report["timing"] = cpu_timing(pipe if device.type == "cpu" else
                                      load_pipe(args.model, None, args.mask_cfg_ratio),
                                      settings[0], val_x[0], args.timing_reps, args.seed,
                                      args.curve or [])
        report["runtime_s"] = time.perf_counter() - start
        return report

    # 1. tokenizer reconstruction
    psnr_x = val_x if not args.psnr_images else val_x[:args.psnr_images]
    values = tokenizer_psnr(pipe, psnr_x)
    report["tokenizer"] = {"n": int(len(values)), "psnr_db_mean": float(values.mean()),
                           "psnr_db_median": float(np.median(values)),
                           "psnr_db_min": float(values.min()), "target_db": PSNR_TARGET_DB,
                           "pass": bool(values.mean() >= PSNR_TARGET_DB)}
    logger.info("tokenizer PSNR %.2f dB on %d val images", values.mean(), len(values))

    # 2. real features
    val_logits, val_feats = predict_logits(classifier, val_x)
    real = accuracy_report(val_logits, val_y)
    report["classifier_real_val"] = real
    train_pick = np.arange(len(train_y))
    if args.train_features and args.train_features < len(train_y):
        train_pick = stratified_subset(train_y, args.train_features, args.seed)
    _, train_feats = predict_logits(classifier, train_x[train_pick])
    train_feats_y = train_y[train_pick]
    train_pix = to_pixels32(to_float(train_x))
    val_pix = to_pixels32(to_float(val_x))
    logger.info("real features done (%.0f s)", time.perf_counter() - start)

    # 3. generated sets: same labels and seeds for every setting
    present = np.flatnonzero(np.bincount(train_y, minlength=len(data_names)) > 0)
    labels = cycling_labels(args.samples, present)
    model_labels = class_map.to_model(labels, args.seed)
    per_class = np.bincount(labels, minlength=len(data_names))[present]
    report["generated_labels"] = {"classes": int(len(present)),
                                  "per_class_min": int(per_class.min()),
                                  "per_class_max": int(per_class.max()),
                                  "model_classes": int(len(np.unique(model_labels))),
                                  "finer_model_classes": class_map.fine}
    matched = [fd(train_feats[matched_subset(labels, train_feats_y, args.seed + k)].numpy(),
                  labels, val_feats.numpy(), val_y) for k in range(FLOOR_DRAWS)]
    matched_feats = train_feats[matched_subset(labels, train_feats_y, args.seed)]
    report["fd_reference"] = {
        "train_matched_vs_val": float(np.mean(matched)),
        "train_matched_vs_val_std": float(np.std(matched)),
        "train_matched_draws": FLOOR_DRAWS,
        "train_all_vs_val": fd(train_feats.numpy(), train_feats_y, val_feats.numpy(), val_y),
        "train_matched_vs_val_unweighted": fd(matched_feats.numpy(), None, val_feats.numpy(),
                                              None),
        "train_n": int(len(train_pick)), "matched_n": int(len(matched_feats)),
    }
    report["generated"] = {}
    gen_feats: dict[str, np.ndarray] = {}
    pipe.generate(int(model_labels[0]), seed=args.seed)  # warm-up: no setting pays for it
    real_sets = RealSets(val_feats.numpy(), val_y, train_feats, train_feats_y, val_pix, train_pix,
                         train_x, real)
    done: dict[Schedule, str] = {}
    for setting in settings:
        schedule = pipe.resolve_schedule(setting.mask_schedule, setting.steps)
        if schedule in done:  # same schedule, labels and seeds: the same images
            twin = done[schedule]
            report["generated"][setting.name] = {**report["generated"][twin],
                                                 "description": setting.description,
                                                 "same_images_as": twin}
            gen_feats[setting.name] = gen_feats[twin]
            continue
        entry, gen_feats[setting.name] = evaluate_setting(pipe, classifier, labels, setting, args,
                                                          real_sets, model_labels)
        report["generated"][setting.name] = entry
        done[schedule] = setting.name
    on, off = report["generated"]["refine_on"], report["generated"]["refine_off"]
    report["refinement_helps_fd"] = bool(on["fd_val"] < off["fd_val"])
    boot = paired_fd_bootstrap(gen_feats["refine_on"], gen_feats["refine_off"], labels,
                               val_feats.numpy(), val_y, BOOTSTRAP_REPS, args.seed)
    report["fd_on_minus_off_bootstrap"] = boot
    report["refinement_fd_verdict"] = fd_verdict(boot["fraction_on_better"])
    report["refinement_helps_accuracy"] = bool(on["accuracy_ratio"] > off["accuracy_ratio"])
    if args.curve:
        report["curve"] = curve_report(report, args.curve, gen_feats, labels, val_feats.numpy(),
                                       val_y, BOOTSTRAP_REPS, args.seed)

    # 4. CPU timing
    if not args.skip_timing:
        cpu_pipe = (pipe if device.type == "cpu"
                    else load_pipe(args.model, None, args.mask_cfg_ratio))
        report["timing"] = cpu_timing(cpu_pipe, settings[0], val_x[0], args.timing_reps,
                                      args.seed, args.curve or [])
    report["runtime_s"] = time.perf_counter() - start
    return report


def save_grid(images: torch.Tensor, labels: np.ndarray, path: Path, per_row: int = 10) -> None:
    """The first sample of every class as a PNG grid (for eyeballing)."""
    _, first = np.unique(labels, return_index=True)
    picks = (images[np.sort(first)].clamp(0, 1) * 255).round().to(torch.uint8)
    rows = (len(picks) + per_row - 1) // per_row
    size = picks.shape[-1]
    canvas = np.full((rows * size, per_row * size, 3), 255, dtype=np.uint8)
    for i, img in enumerate(picks):
        r, c = divmod(i, per_row)
        canvas[r * size:(r + 1) * size, c * size:(c + 1) * size] = img.permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)


def save_nn_pairs(images: torch.Tensor, train_x: np.ndarray, train_pix: torch.Tensor,
                  path: Path, count: int = 10) -> None:
    """The ``count`` generated images closest to the training set (top row) above their nearest
    training images (bottom row), as a PNG: what copying would look like."""
    dist, index = nearest_neighbour_distances(to_pixels32(images), train_pix, rms=True)
    order = torch.argsort(dist)[:count]
    top = (images[order].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    bottom = train_x[index[order].numpy()]
    canvas = np.concatenate([np.concatenate(list(top), 1), np.concatenate(list(bottom), 1)], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "assets" / "hmar-emoji64")
    parser.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--label-data", type=Path, default=None,
                        help="a model trained on finer classes: the .npz of python -m "
                             "train.data fine it was trained on (its classes' image counts)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=1020)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--refine", default="auto",
                        help="refinement ON setting: auto, official or steps N (default auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--psnr-images", type=int, default=0, help="0 = all val images")
    parser.add_argument("--train-features", type=int, default=0,
                        help="train images for feature statistics (0 = all)")
    parser.add_argument("--timing-reps", type=int, default=5)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--timing-only", action="store_true",
                        help="only the CPU timing (e.g. again when the machine is idle)")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown block")
    parser.add_argument("--curve", type=int, nargs="+", default=None, metavar="STEPS",
                        help="speed/quality curve: also evaluate steps=N for each N, e.g. "
                        "--curve 0 1 2 4 8")
    parser.add_argument("--mask-cfg-ratio", type=float, default=None,
                        help="guidance ratio of the mask steps (default: the model's)")
    parser.add_argument("--engine-option", type=engine_option, nargs="+", default=[],
                        metavar="KEY=VALUE", help="sample on the fast engine with these "
                        "options (e.g. fp8=true); timing rows keep the default engine")
    parser.add_argument("--grid", type=Path, help="folder for per-setting sample grids and "
                        "closest-to-training pairs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.quick:
        args.samples = min(args.samples, 50)
        args.psnr_images = args.psnr_images or 64
        args.train_features = args.train_features or 2000
        args.timing_reps = min(args.timing_reps, 3)
    if args.samples < 2:
        parser.error("--samples must be >= 2")
    torch.set_num_threads(args.threads)
    report = evaluate(args)
    if args.timing_only:
        print(json.dumps(report["timing"], indent=2, default=_json_default))
    else:
        print_table(report)
    if args.markdown and not args.timing_only:
        print()
        print(markdown_block(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        logger.info("wrote %s", args.json)
    return 0


def _json_default(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (tuple, np.ndarray)):
        return list(value)
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
