"""A small domain classifier for the emoji64 demo data, for measurement (benchmarks/quality.py).

Usage::

    python -m benchmarks.classifier --data data/emoji64/emoji64.npz \\
        --out benchmarks/models/emoji-classifier [--epochs 15] [--device cpu|cuda] [--seed 0]

Model: a compact CNN (stride-2 stem, 4 conv stages 32-64-128-256 with BatchNorm + ReLU, global
average pool -> 256-d feature -> 51 logits; ~1.2 M parameters). Input: (B, 3, H, W) float RGB in
[0, 1] (normalised inside the model; other sizes are resized to 64 px). Classes without training
images (``fluent3d/flag``) get a fixed -1e4 logit bias, so they are never predicted.

Training: from scratch on the ``train`` split, AdamW + one-cycle LR, random shifts (up to +-4 px,
edge-replicated: the backgrounds are white) and light colour jitter, no flips (emoji are not
mirror-symmetric). The data are very imbalanced (``person`` is ~35 %), while generated test sets
are class-balanced, so the loss is *logit-adjusted* (Menon et al., 2021: train on
``logits + tau * log prior``, predict with plain logits), which targets balanced accuracy.

Reported on the held-out ``val`` split (written to ``config.json``): 51-class top-1 (plain and
class-balanced = mean of per-class recalls), 17-category and 3-style accuracy (probabilities
summed over the other factor, ``class_id = style * 17 + category``).

Saved: ``model.safetensors`` (fp16 weights, loaded back as fp32) and ``config.json``. The
reported accuracies are measured with the weights as saved (after the fp16 round trip).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

logger = logging.getLogger("classifier")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "data" / "emoji64" / "emoji64.npz"
DEFAULT_OUT = ROOT / "benchmarks" / "models" / "emoji-classifier"
NUM_STYLES = 3
NUM_CATEGORIES = 17
EMPTY_LOGIT = -1e4
FeatureFn = Callable[[torch.Tensor], torch.Tensor]

__all__ = [
    "ClassifierConfig",
    "EmojiClassifier",
    "accuracy_report",
    "editing_classifier",
    "load_classifier",
    "load_npz_split",
    "predict_logits",
    "save_classifier",
    "train_classifier",
]


@dataclass
class ClassifierConfig:
    """Architecture and metadata of a saved classifier.

    Attributes:
        num_classes: Output logits (51 for emoji64).
        channels: Widths of the four stages; the last is the feature size.
        image_size: Input side the network expects (other sizes are resized).
        mean, std: Per-channel normalisation of [0, 1] RGB inputs.
        empty_classes: Class ids without training images (never predicted).
        num_styles, num_categories: Factorisation ``class_id = style * num_categories + cat``.
        class_names: Readable name per class id.
        metrics: Held-out accuracies measured after training.
        training: Training settings (for the record).
    """

    num_classes: int = 51
    channels: tuple[int, int, int, int] = (32, 64, 128, 256)
    image_size: int = 64
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    empty_classes: list[int] = field(default_factory=list)
    num_styles: int = NUM_STYLES
    num_categories: int = NUM_CATEGORIES
    class_names: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        return self.channels[-1]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["channels"] = list(self.channels)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["feature_dim"] = self.feature_dim
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ClassifierConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("channels", "mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class EmojiClassifier(nn.Module):
    """Compact CNN: stem (stride 2) + 4 stages -> global average pool -> linear.

    ``forward(x)`` takes (B, 3, H, W) RGB in [0, 1] and returns (B, num_classes) logits;
    ``features(x)`` returns the (B, C) pooled penultimate features (post-ReLU).
    """

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c1, c2, c3, c4 = cfg.channels
        self.stem = _conv_bn(3, c1, stride=2)  # 64 -> 32
        self.stage1 = _conv_bn(c1, c1)
        self.stage2 = nn.Sequential(_conv_bn(c1, c2, 2), _conv_bn(c2, c2))  # 16
        self.stage3 = nn.Sequential(_conv_bn(c2, c3, 2), _conv_bn(c3, c3))  # 8
        self.stage4 = nn.Sequential(_conv_bn(c3, c4, 2), _conv_bn(c4, c4))  # 4
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(c4, cfg.num_classes)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1))
        bias = torch.zeros(cfg.num_classes)
        bias[list(cfg.empty_classes)] = EMPTY_LOGIT
        self.register_buffer("logit_bias", bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, feature_dim) pooled features."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(x.shape)}")
        size = self.cfg.image_size
        x = x.to(self.mean.dtype)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stem(x)))))
        return x.mean(dim=(2, 3))

    def logits_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(feats)) + self.logit_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(x))


# --------------------------------------------------------------------------------------- data
def load_npz_split(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N, 64, 64, 3) uint8, labels (N,) int64 and class names of one split of the npz."""
    with np.load(path, allow_pickle=False) as data:
        names = [str(s) for s in data["split_names"]]
        if split not in names:
            raise ValueError(f"{path}: no split {split!r} (has {names})")
        keep = data["splits"] == names.index(split)
        images = data["images"][keep]
        labels = data["labels"][keep].astype(np.int64)
        class_names = [str(s) for s in data["class_names"]]
    return images, labels, class_names


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    tensor = torch.as_tensor(images)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def augment(x: torch.Tensor, generator: torch.Generator, shift: int = 4,
            jitter: float = 0.1) -> torch.Tensor:
    """Random integer shifts (edge-replicated) and light brightness/contrast/saturation jitter.

    Args:
        x: (B, 3, H, W) in [0, 1].
        generator: CPU generator (determinism).
        shift: Maximum shift in pixels.
        jitter: Maximum relative change of brightness, contrast and saturation.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (b, 2), generator=generator)
    rows = (offsets[:, 0:1] + torch.arange(h)).to(x.device)  # (B, H)
    cols = (offsets[:, 1:2] + torch.arange(w)).to(x.device)  # (B, W)
    idx_b = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    idx_c = torch.arange(3, device=x.device).view(1, 3, 1, 1)
    out = padded[idx_b, idx_c, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
    factors = (1 + (torch.rand(b, 3, generator=generator) * 2 - 1) * jitter).to(x.device)
    bright, contrast, sat = (factors[:, i].view(b, 1, 1, 1) for i in range(3))
    out = out * bright
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean
    gray = out.mean(dim=1, keepdim=True)
    out = (out - gray) * sat + gray
    return out.clamp_(0, 1)


# --------------------------------------------------------------------------------- inference
@torch.no_grad()
def predict_logits(model: EmojiClassifier, images: torch.Tensor | np.ndarray,
                   batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and features of images (float (N, 3, H, W) in [0, 1] or uint8 (N, H, W, 3)).

    Returns:
        ``(logits (N, K), features (N, C))`` as float32 CPU tensors.
    """
    model.eval()
    device = next(model.parameters()).device
    logits, feats = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        chunk = to_float(chunk) if isinstance(chunk, np.ndarray) else chunk
        f = model.features(chunk.to(device))
        logits.append(model.logits_from_features(f).float().cpu())
        feats.append(f.float().cpu())
    if not logits:
        k, c = model.cfg.num_classes, model.cfg.feature_dim
        return torch.zeros(0, k), torch.zeros(0, c)
    return torch.cat(logits), torch.cat(feats)


def factor_predictions(logits: torch.Tensor, num_styles: int = NUM_STYLES,
                       num_categories: int = NUM_CATEGORIES
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted class, category (probabilities summed over styles) and style (over categories)."""
    probs = logits.float().softmax(-1).view(-1, num_styles, num_categories)
    return logits.argmax(-1), probs.sum(1).argmax(-1), probs.sum(2).argmax(-1)


def balanced_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over the classes present in ``target`` of the per-class recall."""
    recalls = [float((pred[target == c] == c).float().mean()) for c in target.unique().tolist()]
    return float(np.mean(recalls)) if recalls else float("nan")


def accuracy_report(logits: torch.Tensor, labels: torch.Tensor | np.ndarray,
                    num_categories: int = NUM_CATEGORIES) -> dict[str, float]:
    """51-class, 17-category and style accuracies, plain (micro) and class-balanced.

    Args:
        logits: (N, styles * categories) classifier logits.
        labels: (N,) true class ids.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    num_styles = logits.shape[-1] // num_categories
    pred, pred_cat, pred_style = factor_predictions(logits, num_styles, num_categories)
    cat, style = labels % num_categories, labels // num_categories
    return {
        "n": int(labels.numel()),
        "class_top1": float((pred == labels).float().mean()),
        "class_top1_balanced": balanced_accuracy(pred, labels),
        "category_top1": float((pred_cat == cat).float().mean()),
        "category_top1_balanced": balanced_accuracy(pred_cat, cat),
        "style_top1": float((pred_style == style).float().mean()),
        "style_top1_balanced": balanced_accuracy(pred_style, style),
    }


# ------------------------------------------------------------------------------------ saving
def save_classifier(model: EmojiClassifier, path: str | Path) -> None:
    """Write ``model.safetensors`` (fp16 floats) and ``config.json`` into folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.half() if v.is_floating_point() and k != "logit_bias" else v)
               .detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")


def load_classifier(path: str | Path = DEFAULT_OUT, device: torch.device | str = "cpu"
                    ) -> tuple[EmojiClassifier, FeatureFn]:
    """Load a saved classifier (eval mode, fp32).

    Returns:
        ``(model, feature_fn)``: ``model(x)`` gives logits and ``feature_fn(x)`` the
        penultimate features (float32, on CPU) of images (N, 3, H, W) in [0, 1], batched
        internally and without gradients.
    """
    path = Path(path)
    cfg = ClassifierConfig.from_dict(json.loads((path / "config.json").read_text()))
    model = EmojiClassifier(cfg)
    state = {k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()}
    model.load_state_dict(state, strict=True)
    model = model.to(device).to(memory_format=torch.channels_last).eval()

    def feature_fn(images: torch.Tensor) -> torch.Tensor:
        return predict_logits(model, images)[1]

    return model, feature_fn


def editing_classifier() -> Callable[[torch.Tensor], torch.Tensor]:
    """The default classifier as a logits callable, for ``benchmarks/editing_quality.py``
    (``--classifier benchmarks.classifier:editing_classifier``)."""
    model, _ = load_classifier(DEFAULT_OUT)
    return lambda images: predict_logits(model, images)[0]


# ---------------------------------------------------------------------------------- training
def _lr_at(step: int, total: int, peak: float, warmup: float = 0.15) -> float:
    """One-cycle: linear warm-up to ``peak`` then cosine decay to ~0."""
    warm = max(1, int(total * warmup))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def train_classifier(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    num_classes: int,
    *,
    epochs: int = 15,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    tau: float = 1.0,
    label_smoothing: float = 0.05,
    channels: Sequence[int] = (32, 64, 128, 256),
    seed: int = 0,
    device: torch.device | str = "cpu",
    class_names: Sequence[str] = (),
    log_every: int = 20,
) -> EmojiClassifier:
    """Train an :class:`EmojiClassifier` from scratch (deterministic given ``seed``).

    Args:
        train_images: (N, H, W, 3) uint8.
        train_labels: (N,) class ids in ``[0, num_classes)``.
        tau: Logit-adjustment strength (0 = plain cross-entropy).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
    x_all = to_float(train_images)
    mean = tuple(float(v) for v in x_all.mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in x_all.std(dim=(0, 2, 3)))
    cfg = ClassifierConfig(num_classes=num_classes, channels=tuple(channels), mean=mean, std=std,
                           empty_classes=[int(c) for c in np.flatnonzero(counts == 0)],
                           class_names=list(class_names))
    model = EmojiClassifier(cfg).to(device).to(memory_format=torch.channels_last)
    logger.info("classifier: %.2f M parameters, %d train images, %d empty classes %s",
                sum(p.numel() for p in model.parameters()) / 1e6, len(train_labels),
                len(cfg.empty_classes), cfg.empty_classes)
    # the loss only sees classes with images: empty ones carry a -1e4 bias, and label smoothing
    # over them would add a huge constant
    valid = torch.as_tensor(np.flatnonzero(counts > 0), device=device)
    remap = torch.full((num_classes,), -1, dtype=torch.int64)
    remap[valid.cpu()] = torch.arange(len(valid))
    prior = torch.tensor(counts[counts > 0] / counts.sum(), dtype=torch.float32)
    adjust = (tau * prior.log()).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    labels_all = torch.as_tensor(train_labels, dtype=torch.int64)
    steps_per_epoch = len(labels_all) // batch_size  # drop the last partial batch
    total = epochs * steps_per_epoch
    step, start, cpu_start = 0, time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(labels_all), generator=generator)
        running, seen = 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = augment(x_all[idx], generator).to(device)
            y = remap[labels_all[idx]].to(device)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total, lr)
            logits = model(x)[:, valid] + adjust
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(idx)
            seen += len(idx)
            step += 1
            if log_every and step % log_every == 0:
                logger.info("epoch %d step %d/%d loss %.3f (%.0f s)", epoch, step, total,
                            running / seen, time.perf_counter() - start)
        logger.info("epoch %d done: train loss %.3f (%.0f s)", epoch, running / max(seen, 1),
                    time.perf_counter() - start)
    cfg.training = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "logit_adjust_tau": tau, "label_smoothing": label_smoothing, "seed": seed,
        "augment": "shift<=4px (replicate), brightness/contrast/saturation +-10%, no flip",
        "optimizer": "AdamW, linear warm-up 15% + cosine", "train_images": int(len(labels_all)),
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1), "device": str(device),
        "threads": torch.get_num_threads(),
    }
    return model.eval()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="emoji64.npz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--tau", type=float, default=1.0, help="logit adjustment (0 = off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--limit", type=int, default=0, help="use only N train images (tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    train_x, train_y, class_names = load_npz_split(args.data, "train")
    val_x, val_y, _ = load_npz_split(args.data, "val")
    if args.limit:
        pick = np.random.default_rng(args.seed).permutation(len(train_y))[:args.limit]
        train_x, train_y = train_x[np.sort(pick)], train_y[np.sort(pick)]
    model = train_classifier(train_x, train_y, len(class_names), epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, tau=args.tau,
                             seed=args.seed, device=args.device, class_names=class_names)
    save_classifier(model, args.out)
    model, _ = load_classifier(args.out, args.device)  # measure the weights as saved (fp16)
    logits, _ = predict_logits(model, val_x)
    metrics = {"val": accuracy_report(logits, val_y)}
    logits, _ = predict_logits(model, train_x)
    metrics["train"] = accuracy_report(logits, train_y)
    model.cfg.metrics = metrics
    (args.out / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    for split, report in metrics.items():
        logger.info("%s: %s", split, ", ".join(f"{k} {v:.4f}" if isinstance(v, float)
                                                else f"{k} {v}" for k, v in report.items()))
    size = sum(f.stat().st_size for f in args.out.iterdir())
    logger.info("saved %s (%.2f MB)", args.out, size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
