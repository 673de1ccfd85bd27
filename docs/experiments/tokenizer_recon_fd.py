"""Experiment (session 11): is the tokenizer what keeps the demo model's FD near 14?

Domain-FD (``benchmarks/quality.py``'s: the domain classifier's features, class-balanced,
against the held-out images) of 1,020 *training* images matched to the generated sets'
labels, as they are and after an encode → decode round trip through the model's tokenizer.
If the round trip already cost several FD points, no transformer could reach FD ≤ 10 with this
tokenizer; if not, the transformer is the limit.

    PYTHONPATH=. python docs/experiments/tokenizer_recon_fd.py --draws 2
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

from benchmarks.classifier import load_classifier, load_npz_split, predict_logits, to_float
from benchmarks.quality import DEFAULT_CLASSIFIER, DEFAULT_DATA, cycling_labels, fd, matched_subset
from hmar_core import Pipeline

logger = logging.getLogger("tokenizer_recon_fd")


@torch.no_grad()
def round_trip(pipe: Pipeline, images: np.ndarray, batch: int = 128) -> torch.Tensor:
    """uint8 (N, H, W, 3) → reconstructions (N, 3, H, W) float in [0, 1]."""
    out = []
    for start in range(0, len(images), batch):
        x = to_float(images[start:start + batch]) * 2 - 1
        f_hat = pipe.tokenizer.fhat_from_tokens(pipe.tokenizer.encode(x))[-1]
        out.append((pipe.tokenizer.decode_fhat(f_hat).clamp(-1, 1) + 1) / 2)
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="assets/hmar-emoji64")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--samples", type=int, default=1020)
    parser.add_argument("--draws", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    pipe = Pipeline.from_pretrained(args.model)
    classifier, _ = load_classifier(DEFAULT_CLASSIFIER)
    train_x, train_y, _ = load_npz_split(args.data, "train")
    val_x, val_y, _ = load_npz_split(args.data, "val")
    val_feats = predict_logits(classifier, val_x)[1].numpy()
    present = np.flatnonzero(np.bincount(train_y, minlength=pipe.num_classes) > 0)
    labels = cycling_labels(args.samples, present)
    for draw in range(args.draws):
        picked = train_x[matched_subset(labels, train_y, draw)]
        real = predict_logits(classifier, picked)[1].numpy()
        recon = predict_logits(classifier, round_trip(pipe, picked))[1].numpy()
        logger.info("draw %d: FD of %d train images vs held-out %.2f; of their tokenizer "
                    "reconstructions %.2f", draw, len(picked), fd(real, labels, val_feats, val_y),
                    fd(recon, labels, val_feats, val_y))


if __name__ == "__main__":
    main()
