"""AdamW with the official parameter groups, and the learning-rate / weight-decay schedules.

Parameter groups (spec §4.3): no weight decay for 1-D tensors, biases, position and level
embeddings, the attention log-temperatures, and any name the caller adds (the tokenizer adds
its codebook); everything else (class embedding, word embedding, linear and conv weights)
decays. Only parameters with ``requires_grad`` are given to the optimiser.

The schedules are pure functions of the step: a resumed run recomputes them exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from .config import OptimConfig

__all__ = [
    "NO_DECAY_NAMES",
    "apply_schedule",
    "build_adamw",
    "lr_at",
    "param_groups",
    "weight_decay_at",
]

logger = logging.getLogger(__name__)

#: Name fragments of parameters that never decay (besides 1-D tensors and biases).
NO_DECAY_NAMES: tuple[str, ...] = ("pos_embed", "pos_start", "level_embed", "log_scale")


def param_groups(
    model: nn.Module, weight_decay: float, extra_no_decay: Sequence[str] = ()
) -> list[dict]:
    """Split the trainable parameters of ``model`` into a decayed and a non-decayed group.

    Args:
        model: the network (unwrapped).
        weight_decay: decay of the decayed group.
        extra_no_decay: more name fragments that must not decay.

    Returns:
        Two AdamW parameter groups (``"decay"`` and ``"no_decay"``; empty ones dropped), each
        with the parameter names for logging.
    """
    fragments = NO_DECAY_NAMES + tuple(extra_no_decay)
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith("bias") or any(f in name for f in fragments):
            no_decay.append(param)
            no_decay_names.append(name)
        else:
            decay.append(param)
            decay_names.append(name)
    groups = [
        {"params": decay, "names": decay_names, "weight_decay": weight_decay,
         "group": "decay"},
        {"params": no_decay, "names": no_decay_names, "weight_decay": 0.0,
         "group": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


def build_adamw(
    model: nn.Module,
    cfg: OptimConfig,
    global_batch: int,
    device: torch.device,
    extra_no_decay: Sequence[str] = (),
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` with the official groups.

    Raises:
        ValueError: the model has no trainable parameter.
    """
    groups = param_groups(model, cfg.weight_decay, extra_no_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    peak = cfg.peak_lr(global_batch)
    optimizer = torch.optim.AdamW(
        groups, lr=peak, betas=cfg.betas, eps=cfg.eps, fused=fused or None
    )
    for group in optimizer.param_groups:
        logger.info("optimizer group %s: %d tensors, %d parameters, weight decay %g",
                    group["group"], len(group["params"]),
                    sum(p.numel() for p in group["params"]), group["weight_decay"])
    logger.info("peak lr %.3g (global batch %d)", peak, global_batch)
    return optimizer


def lr_at(step: int, total_steps: int, cfg: OptimConfig, peak: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based) in a run of ``total_steps``.

    Warm-up: linear from ``warmup_start_ratio · peak`` to ``peak`` over
    ``round(warmup_fraction · total_steps)`` steps. Then ``lin0`` (official): the peak for the
    first ``plateau_fraction`` of the remaining steps, then linear to ``end_ratio · peak`` at
    the last step; ``cosine``: half cosine from the peak to ``end_ratio · peak``;
    ``constant``: the peak.
    """
    warmup = round(cfg.warmup_fraction * total_steps)
    if step < warmup:
        start = cfg.warmup_start_ratio
        return peak * (start + (1 - start) * step / warmup)
    if cfg.schedule == "constant":
        return peak
    span = max(total_steps - 1 - warmup, 1)
    progress = min(max((step - warmup) / span, 0.0), 1.0)
    end = cfg.end_ratio
    if cfg.schedule == "cosine":
        return peak * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress)))
    plateau = cfg.plateau_fraction
    if progress <= plateau:
        return peak
    return peak * (end + (1 - end) * (1 - (progress - plateau) / (1 - plateau)))


def weight_decay_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Weight decay of step ``step``: cosine from ``weight_decay`` to ``weight_decay_end``."""
    if cfg.weight_decay_end is None:
        return cfg.weight_decay
    progress = min(step / max(total_steps - 1, 1), 1.0)
    start, end = cfg.weight_decay, cfg.weight_decay_end
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def apply_schedule(
    optimizer: torch.optim.Optimizer, step: int, total_steps: int, cfg: OptimConfig,
    peak: float,
) -> float:
    """Set every group's lr (and the decayed group's weight decay) for ``step``; returns lr."""
    lr = lr_at(step, total_steps, cfg, peak)
    wd = weight_decay_at(step, total_steps, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("group") == "decay":
            group["weight_decay"] = wd
    return lr
