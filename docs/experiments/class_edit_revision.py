"""Experiment (session 9; since then the default of class edits, ``EditOptions.revise``): class
edits that revise the kept coarse tokens the target class disfavours, with the layout change
that ``benchmarks/editing_quality.py`` does not measure.

A whole-image class edit at strength s keeps the source's tokens of scales < s whole. Here
those scales keep only the tokens the target class does not disfavour: with the
teacher-forced next-scale logits of the source pyramid, a coarse token is regenerated when
``log p(token | target) - log p(token | null) < tau``. Everything else is the editor's own
path (the spec, its schedule, ``run_spec``, the engine's decoder); success is the domain
classifier's verdict, layout change the mean absolute difference of the 8×8 average-pooled
pictures (0-255). The targets and seeds are those of ``benchmarks/editing_quality.py``.

    python docs/experiments/class_edit_revision.py --num 100
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.editing_quality import load_classifier, load_images, predict
from hmar_core import Pipeline
from hmar_core import images as im
from hmar_core.editing import ops
from hmar_core.editing.revise import coarse_support
from hmar_core.editing.session import run_spec
from hmar_core.editing.spec import EditOptions, EditSpec

logger = logging.getLogger("class_edit_revision")
# the default table: "strength[:tau]" (scales kept from the source, tau of the revision;
# without it they are kept whole)
VARIANTS = ("1", "2", "3", "3:0", "3:-1", "3:-2")


def parse_variant(text: str) -> tuple[str, int, float | None]:
    """``"3:-2"`` → (its table name, 3, -2.0); ``"2"`` → (name, 2, None)."""
    kept, _, tau = text.partition(":")
    name = f"strength {kept}" + (f", tau {tau}" if tau else "")
    return name, int(kept), float(tau) if tau else None


def layout_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the 8×8 average-pooled pictures (0-255)."""
    pooled = [F.adaptive_avg_pool2d(torch.from_numpy(x).permute(2, 0, 1).float()[None], 8)
              for x in (a, b)]
    return float((pooled[0] - pooled[1]).abs().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/hmar-emoji64")
    parser.add_argument("--images", default="data/emoji64/emoji64.npz")
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                        help='"strength[:tau]" each, e.g. 1 3:-2 (default: the table above)')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    pipe = Pipeline.from_pretrained(args.model, engine="fast")
    images, labels = load_images(args.images, pipe, args.num, args.seed)
    classifier = load_classifier("benchmarks.classifier:editing_classifier", pipe.device)
    rng = np.random.default_rng(args.seed + 1)  # the targets of benchmarks/editing_quality.py
    settings = pipe.sampler_settings()
    variants = {name: (kept, tau) for name, kept, tau in map(parse_variant, args.variants)}
    stats = {name: {"hits": 0, "layout": [], "revised": []} for name in variants}
    for index, (rgb, label) in enumerate(zip(images, labels)):
        target = int(rng.choice([c for c in range(pipe.num_classes) if c != label]))
        with torch.no_grad():
            source = pipe.backend.encode(im.to_model_images([rgb], pipe.device, pipe.dtype))
        whole = EditSpec(tuple(source), tuple(torch.ones_like(t, dtype=torch.bool)
                                              for t in source),
                         torch.tensor([target], device=pipe.device), 3)
        scored = max(1, max(kept for kept, _ in variants.values()))
        support = coarse_support(pipe, whole, scored)  # the library's own scoring
        for name, (kept, tau) in variants.items():
            regenerate = [torch.ones_like(t, dtype=torch.bool) for t in source]
            strength = kept
            if tau is not None:
                strength = 0
                for si in range(kept):
                    regenerate[si] = support[si] < tau
                coarse = sum(int(r.sum()) for r in regenerate[:kept])
                stats[name]["revised"].append(
                    coarse / max(1, sum(p * p for p in pipe.patch_nums[:kept])))
            spec = EditSpec(tuple(source), tuple(regenerate),
                            torch.tensor([target], device=pipe.device), strength)
            options = EditOptions(class_id=target, seed=args.seed + index, strength=strength)
            with torch.no_grad():
                run = run_spec(pipe, spec, settings, ops._schedule(pipe, options, spec),
                               args.seed + index)
                out = im.from_model_images(pipe.backend.decode(run.output.f_hat))[0]
            stats[name]["hits"] += predict(classifier, [im.to_pil(out)], pipe.device)[0] == target
            stats[name]["layout"].append(layout_change(rgb, out))
    logger.info("%-20s %8s %14s %16s", "variant", "success", "layout change",
                "coarse revised")
    for name, row in stats.items():
        revised = f"{np.mean(row['revised']):.2f}" if row["revised"] else "-"
        logger.info("%-20s %8.2f %14.1f %16s", name, row["hits"] / len(images),
                    float(np.mean(row["layout"])), revised)


if __name__ == "__main__":
    main()
