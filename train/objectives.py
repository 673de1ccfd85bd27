"""HMAR training objectives: loss weights, label dropout, stage-2 masks, and the loss module.

Shape legend: B = global batch, b = local batch, L = tokens of the pyramid, V = vocab.

* :func:`scale_loss_weights` — per-position weights of the stage-1 loss (spec §4.1): ``none``
  (1/L), ``equal`` (1/pn², each scale sums to 1) or ``lognorm`` (official HMAR: a normal pdf
  over the reversed scale ratios, per-scale totals 0.0247 … 0.0709 for the 256-px pyramid).
* :func:`drop_labels` — label dropout for CFG (the trainer's job, never the model's).
* :func:`sample_masks` — stage-2 masks: a ratio p ~ U[min, max) and ceil(pn²·p) ≥ 1 positions
  per scale ≥ 1, one set for the whole batch (official) or one per sample.
* :func:`next_scale_loss`, :func:`masked_loss` — weighted cross-entropy and accuracy of one
  pass's logits (pure functions, compiled as a whole with ``SpeedConfig.compile_loss``).
* :class:`HMARObjective` — the transformer plus the frozen quantiser as one module (what DDP
  wraps): teacher-forcing inputs from token ids, next-scale and/or mask logits, losses. Its
  :class:`~train.config.SpeedConfig` picks the fast paths of the step (all off by default).

The random draws come from step-keyed generators over the *global* batch; each rank takes its
slice, so one process and N processes make identical decisions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hmar_core import pyramid
from hmar_core.tokenizer import MultiScaleQuantizer
from hmar_core.transformer import HMARTransformer

from .config import LossWeighting, SpeedConfig, Stage
from .loop import to_device_async

__all__ = [
    "HMARObjective",
    "drop_labels",
    "masked_loss",
    "next_scale_loss",
    "sample_masks",
    "scale_loss_weights",
    "set_trainable",
]


def scale_loss_weights(patch_nums: Sequence[int], weighting: LossWeighting) -> torch.Tensor:
    """Per-position weights (L,) float32 of the next-scale loss (summed over positions)."""
    sizes = np.array([pn * pn for pn in patch_nums], dtype=np.float64)
    length = int(sizes.sum())
    if weighting == "none":
        totals = sizes / length
    elif weighting == "equal":
        totals = np.ones_like(sizes)
    elif weighting == "lognorm":
        ratios = np.array(patch_nums, dtype=np.float64) / patch_nums[-1]
        std = ratios.std(ddof=1) if len(ratios) > 1 else 1.0
        z = (ratios[::-1] - ratios.mean()) / std
        pdf = np.exp(-0.5 * z * z)
        totals = pdf / pdf.sum()
    else:
        raise ValueError(f"unknown loss weighting {weighting!r}")
    per_position = np.repeat(totals / sizes, sizes.astype(np.int64))
    return torch.from_numpy(per_position).float()


def drop_labels(labels_b: torch.Tensor, null_class: int, probability: float,
                generator: torch.Generator, global_batch: int, local: slice) -> torch.Tensor:
    """Replace labels by ``null_class`` with ``probability`` (draws over the global batch).

    Args:
        labels_b: this rank's labels (b,).
        null_class: the unconditional class id.
        probability: label-drop rate (0.1 officially).
        generator: step-keyed CPU generator (same on every rank).
        global_batch: B.
        local: this rank's slice of the global batch.
    """
    if probability <= 0:
        return labels_b
    drop_B = torch.rand(global_batch, generator=generator) < probability
    drop_b = to_device_async(drop_B[local], labels_b.device)
    return torch.where(drop_b, torch.full_like(labels_b, null_class), labels_b)


def sample_masks(patch_nums: Sequence[int], global_batch: int, generator: torch.Generator,
                 *, per_sample: bool, ratio_min: float = 0.0, ratio_max: float = 1.0
                 ) -> torch.Tensor:
    """Stage-2 masks (B, L) bool: True = the mask branch sees [MASK] and is trained there.

    A ratio p ~ U[ratio_min, ratio_max) (one per batch, or one per sample), then for every
    scale ≥ 1 ``max(1, ceil(pn²·p))`` positions chosen uniformly without replacement. Scale 0
    (predicted from the class token) is never masked.
    """
    rows = global_batch if per_sample else 1
    ratio = ratio_min + (ratio_max - ratio_min) * torch.rand(rows, generator=generator)  # (R,)
    parts = [torch.zeros(rows, patch_nums[0] ** 2, dtype=torch.bool)]
    for pn in patch_nums[1:]:
        n = pn * pn
        count = (ratio * n).ceil().clamp(1, n).long()  # (R,)
        rank = torch.rand(rows, n, generator=generator).argsort(1).argsort(1)  # random ranks
        parts.append(rank < count[:, None])
    masks = torch.cat(parts, dim=1)
    return masks if per_sample else masks.expand(global_batch, -1)


def set_trainable(transformer: HMARTransformer, stage: Stage) -> None:
    """Freeze what a stage does not train.

    ``stage1``: the mask branch (blocks, head, embedding) is frozen. ``stage2``: only the mask
    blocks, mask head and mask embedding train (official: the last n blocks, the head and the
    mask embedding of the stage-2 model). ``joint``: everything trains.
    """
    mask_prefixes = ("mask_blocks.", "mask_head.", "mask_embed")
    for name, param in transformer.named_parameters():
        is_mask = name.startswith(mask_prefixes)
        if stage == "stage1":
            param.requires_grad_(not is_mask)
        elif stage == "stage2":
            param.requires_grad_(is_mask)
        else:
            param.requires_grad_(True)


def next_scale_loss(logits_BLV: torch.Tensor, tokens_BL: torch.Tensor, weights_L: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage-1 loss: per-position float32 cross-entropy, weighted, summed, batch mean.

    Args:
        logits_BLV: (b, L, V) logits in any float dtype (upcast to float32 here).
        tokens_BL: (b, L) int64 targets.
        weights_L: (L,) float32 per-position weights.

    Returns:
        ``(loss, mean cross-entropy, accuracy)``, 0-d; the last two detached.
    """
    batch, length = tokens_BL.shape
    ce = F.cross_entropy(logits_BLV.float().flatten(0, 1), tokens_BL.flatten(), reduction="none")
    loss = (ce.view(batch, length) * weights_L).sum(1).mean()
    accuracy = (logits_BLV.detach().argmax(-1) == tokens_BL).float().mean()
    return loss, ce.detach().mean(), accuracy


def masked_loss(logits_BLV: torch.Tensor, tokens_BL: torch.Tensor, masked_BL: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-2 loss: float32 cross-entropy averaged over each sample's masked positions.

    Returns:
        ``(loss, accuracy over the masked positions)``, 0-d; the accuracy detached.
    """
    batch, length = tokens_BL.shape
    ce = F.cross_entropy(logits_BLV.float().flatten(0, 1), tokens_BL.flatten(), reduction="none")
    weights = masked_BL.float()
    per_sample = (ce.view(batch, length) * weights).sum(1) / weights.sum(1).clamp_min(1)
    correct = (logits_BLV.detach().argmax(-1) == tokens_BL).float()
    accuracy = (correct * weights).sum() / weights.sum().clamp_min(1)
    return per_sample.mean(), accuracy


class HMARObjective(nn.Module):
    """Transformer + frozen quantiser → losses of one step.

    Args:
        transformer: the network being trained.
        quantizer: the frozen tokenizer's quantiser (codebook and phi convs).
        stage: which losses to compute.
        weights_L: (L,) next-scale loss weights (:func:`scale_loss_weights`).
        mask_loss_weight: weight of the mask loss in ``joint``.
        speed: the step's speed options (``compile_blocks`` compiles the transformer's blocks
            in place through :meth:`HMARTransformer.compile_blocks`).
    """

    def __init__(self, transformer: HMARTransformer, quantizer: MultiScaleQuantizer,
                 stage: Stage, weights_L: torch.Tensor, mask_loss_weight: float = 1.0,
                 speed: SpeedConfig | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.quantizer = quantizer
        self.stage = stage
        self.mask_loss_weight = mask_loss_weight
        self.speed = SpeedConfig() if speed is None else speed
        self.register_buffer("weights_L", weights_L.float(), persistent=False)
        kwargs = self.speed.compile_kwargs
        if self.speed.compile_blocks:
            transformer.compile_blocks(**kwargs)
        self._build_inputs = (torch.compile(self._teacher_inputs, **kwargs)
                              if self.speed.compile_inputs else self._teacher_inputs)
        compile_loss = self.speed.compile_loss
        self._ns_loss = (torch.compile(next_scale_loss, **kwargs) if compile_loss
                         else next_scale_loss)
        self._mask_loss = torch.compile(masked_loss, **kwargs) if compile_loss else masked_loss

    def _teacher_inputs(self, tokens_BL: torch.Tensor, need_mask_input: bool
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        patch_nums = self.transformer.cfg.patch_nums
        tokens = pyramid.split_scales(tokens_BL, patch_nums)
        codebook, phis = self.quantizer.codebook.float(), self.quantizer.phis()
        with torch.autocast(device_type=tokens_BL.device.type, enabled=False):
            x_ns = pyramid.teacher_forcing_input(tokens, codebook, phis, patch_nums)
            x_mask = (pyramid.masked_teacher_input(tokens, codebook, phis, patch_nums)
                      if need_mask_input else None)
        return x_ns, x_mask

    @torch.no_grad()
    def inputs(self, tokens_BL: torch.Tensor, need_mask_input: bool
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forcing inputs (b, L − 1, C) float32: next-scale and (optionally) mask."""
        if not self.transformer.training:  # evaluation runs the plain code
            return self._teacher_inputs(tokens_BL, need_mask_input)
        return self._build_inputs(tokens_BL, need_mask_input)

    def _logits(self, labels: torch.Tensor, x_ns: torch.Tensor, x_mask: torch.Tensor | None = None,
                masked: torch.Tensor | None = None) -> torch.Tensor:
        """The transformer's (b, L, V) logits with the step's options (training passes)."""
        speed = self.speed
        return self.transformer(
            labels, x_ns, x_mask, masked,
            autocast_logits=speed.autocast_logits and self.transformer.training,
            sync_label_check=not speed.async_label_check)

    def forward(self, tokens_BL: torch.Tensor, labels: torch.Tensor,
                masked_BL: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch.

        Args:
            tokens_BL: (b, L) int64 ground-truth token pyramid.
            labels: (b,) class ids, label dropout already applied.
            masked_BL: (b, L) bool stage-2 masks (needed for ``stage2``/``joint``).

        Returns:
            ``(loss, stats)``; stats are detached scalars (``ns_loss``, ``ns_acc``,
            ``mask_loss``, ``mask_acc`` as computed).
        """
        use_mask = self.stage in ("stage2", "joint")
        if use_mask and masked_BL is None:
            raise ValueError(f"stage {self.stage!r} needs masks (b, L) bool")
        x_ns, x_mask = self.inputs(tokens_BL, use_mask)
        return self.loss_from_inputs(tokens_BL, labels, x_ns, x_mask, masked_BL)

    def loss_from_inputs(self, tokens_BL: torch.Tensor, labels: torch.Tensor,
                         x_ns: torch.Tensor, x_mask: torch.Tensor | None = None,
                         masked_BL: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`forward` after :meth:`inputs` (``x_ns``, ``x_mask``: (b, L − 1, C))."""
        use_ns = self.stage in ("stage1", "joint")
        use_mask = self.stage in ("stage2", "joint")
        stats: dict[str, torch.Tensor] = {}
        loss = x_ns.new_zeros(())
        training = self.transformer.training  # evaluation runs the plain code
        ns_loss_fn = self._ns_loss if training else next_scale_loss
        mask_loss_fn = self._mask_loss if training else masked_loss
        if use_ns:
            logits = self._logits(labels, x_ns)  # (b, L, V)
            ns_loss, ns_ce, ns_acc = ns_loss_fn(logits, tokens_BL, self.weights_L)
            loss = loss + ns_loss
            stats["ns_loss"] = ns_loss.detach()
            stats["ns_ce"] = ns_ce
            stats["ns_acc"] = ns_acc
        if use_mask and masked_BL is not None and x_mask is not None:
            logits = self._logits(labels, x_ns, x_mask, masked_BL[:, 1:])  # (b, L, V)
            mask_loss, mask_acc = mask_loss_fn(logits, tokens_BL, masked_BL)
            loss = loss + (self.mask_loss_weight if use_ns else 1.0) * mask_loss
            stats["mask_loss"] = mask_loss.detach()
            stats["mask_acc"] = mask_acc
        stats["loss"] = loss.detach()
        return loss, stats
