"""The HMAR sampler: next-scale steps, masked refinement, CFG, top-k/top-p, constraints.

Shape legend: B = batch, n = tokens of the current scale (pn²), V = vocab, C = latent channels.

:func:`sample` takes the network as a callable (:class:`ScaleModel`), the tokenizer's quantiser
for the pyramid math, a :class:`~hmar_core.config.SamplerConfig`, and an explicit
``torch.Generator`` — the only source of randomness. Random draws happen in the official order
(one multinomial over the (B·n, V) probabilities per next-scale step and per mask step, after one
draw of the labels when they are not given), so the same seed gives the official tokens.

Editing is this same loop with a :class:`ScaleConstraint`: after every sampling step, kept
positions are overwritten with the source tokens and get infinite confidence, so refinement never
re-masks them (spec §7, style item 5). Plain generation is the constraint-free case.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from . import pyramid
from .config import SamplerConfig
from .schedules import Schedule, cfg_weight, remask_counts

__all__ = [
    "Branch",
    "SampleOutput",
    "ScaleConstraint",
    "ScaleInput",
    "ScaleModel",
    "ScaleState",
    "guided_logits",
    "lowest_confidence",
    "sample",
    "sample_from_logits",
    "top_k_top_p_filter",
]

logger = logging.getLogger(__name__)


Branch = Literal["ns", "mask"]


@dataclass(frozen=True)
class ScaleInput:
    """What the network sees of one scale (B rows, n = pn² tokens, C latent channels).

    Attributes:
        scale: the scale index.
        x_ns: (B, n, C) next-scale input; ``None`` for scale 0 (the class token).
        x_mask, masked: the mask branch's (B, n, C) own-scale input and (B, n) bool positions
            that see [MASK]; ``None`` for the next-scale branch.
        branch: ``"ns"`` (next-scale prediction) or ``"mask"`` (masked refinement).
    """

    scale: int
    x_ns: torch.Tensor | None
    x_mask: torch.Tensor | None = None
    masked: torch.Tensor | None = None
    branch: Branch = "ns"

    def twice(self) -> ScaleInput:
        """Both CFG halves: every tensor stacked on itself along the batch."""
        def twice(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else torch.cat([x, x])

        return ScaleInput(self.scale, twice(self.x_ns), twice(self.x_mask), twice(self.masked),
                          self.branch)


class ScaleModel(Protocol):
    """What the sampler needs from the network: ``model_fn(labels (B,), ScaleInput) -> (B, n, V)
    float32`` logits of one scale."""

    def __call__(self, labels: torch.Tensor, inputs: ScaleInput) -> torch.Tensor: ...


class Quantizer(Protocol):
    """What the sampler needs from the tokenizer (``MultiScaleQuantizer`` fits)."""

    @property
    def codebook(self) -> torch.Tensor: ...

    def phis(self) -> list[Callable[[torch.Tensor], torch.Tensor]]: ...


DrawFn = Callable[[torch.Tensor, int, float, torch.Generator],
                  tuple[torch.Tensor, torch.Tensor]]


class ScaleConstraint(Protocol):
    """An edit: which tokens of each scale are kept from a source pyramid."""

    def keep(self, scale: int) -> torch.Tensor | None:
        """(B, n) bool, True = force the source token; ``None`` = keep nothing."""
        ...

    def source(self, scale: int) -> torch.Tensor:
        """(B, n) int64 source tokens of that scale."""
        ...


@dataclass
class ScaleState:
    """The sampler's state after committing scale ``scale`` (enough to resume after it)."""

    scale: int
    tokens: list[torch.Tensor]
    f_hat: torch.Tensor
    confidence: torch.Tensor


@dataclass
class SampleOutput:
    """Result of :func:`sample`.

    Attributes:
        tokens: the token pyramid, list of (B, pn²) int64.
        f_hat: final (B, C, H, W) latent.
        confidence: per scale, (B, pn²) probability of each final token under the distribution
            it was drawn from (kept tokens of an edit: 1.0).
        labels: (B,) the class ids used (drawn when not given).
        steps: per scale, the tokens after the next-scale step and after each mask step.
    """

    tokens: list[torch.Tensor]
    f_hat: torch.Tensor
    confidence: list[torch.Tensor]
    labels: torch.Tensor
    steps: list[list[torch.Tensor]] = field(default_factory=list)


# --------------------------------------------------------------------------------- pure steps
def top_k_top_p_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k, then outside the top-p nucleus, to -inf (new tensor).

    top-k keeps every logit ≥ the k-th largest of its row (ties kept); top-p (applied to the
    top-k-filtered logits) drops the smallest entries whose cumulative probability is
    ≤ 1 - top_p and always keeps the largest. ``top_k = 0`` / ``top_p = 0`` disable each.
    """
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, dim=-1, largest=True, sorted=False).values.amin(-1, keepdim=True)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_from_logits(
    logits_BnV: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Filter, then draw one token per position with one multinomial call.

    Returns:
        tokens (B, n) int64 and probs (B, n, V), the distribution they were drawn from.
    """
    batch, n, vocab = logits_BnV.shape
    probs = top_k_top_p_filter(logits_BnV, top_k, top_p).softmax(dim=-1)
    idx = torch.multinomial(probs.view(-1, vocab), 1, replacement=True, generator=generator)
    return idx.view(batch, n), probs


def lowest_confidence(confidence_Bn: torch.Tensor, counts_B: torch.Tensor) -> torch.Tensor:
    """Per row, mark the ``counts_B[b]`` least confident positions → bool (B, n)."""
    order = confidence_Bn.argsort(dim=-1)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(
        order.shape[-1], device=order.device).expand_as(order))
    return ranks < counts_B[:, None]


def guided_logits(
    model_fn: ScaleModel,
    labels: torch.Tensor,
    null_class: int,
    weight: float,
    inputs: ScaleInput,
    *,
    pair: bool = False,
) -> torch.Tensor:
    """Classifier-free guidance: ``(1 + t)·cond - t·uncond``.

    When t = 0 only the conditional half runs (the result is the same), unless ``pair`` asks
    for both halves anyway (stateful models whose KV cache needs a constant batch).
    """
    guided = getattr(model_fn, "guided", None)
    if guided is not None:  # the model runs both halves itself (e.g. the fast runner)
        return guided(labels, null_class, weight, inputs)
    if weight == 0.0 and not pair:
        return model_fn(labels, inputs)
    both = torch.cat([labels, torch.full_like(labels, null_class)])
    cond, uncond = model_fn(both, inputs.twice()).chunk(2)
    return (1 + weight) * cond - weight * uncond


# ------------------------------------------------------------------------------ the sampler
def sample(
    model_fn: ScaleModel,
    quantizer: Quantizer,
    patch_nums: Sequence[int],
    cfg: SamplerConfig,
    schedule: Schedule,
    *,
    labels: torch.Tensor,
    null_class: int,
    generator: torch.Generator,
    constraint: ScaleConstraint | None = None,
    on_scale: Callable[[ScaleState], None] | None = None,
    resume: ScaleState | None = None,
    record_steps: bool = False,
    draw: DrawFn | None = None,
    upsample: pyramid.Upsample | None = None,
) -> SampleOutput:
    """Generate a token pyramid scale by scale.

    Args:
        model_fn: the network as a callable (see :class:`ScaleModel`).
        quantizer: codebook and phi convs of the tokenizer.
        patch_nums: the pyramid.
        cfg: guidance / filtering settings.
        schedule: a validated mask schedule (one entry per scale).
        labels: (B,) int64 class ids (the caller draws them when the user gave none).
        null_class: the unconditional class id.
        generator: the only source of randomness.
        constraint: kept tokens per scale (editing); ``None`` for plain generation.
        on_scale: called with the :class:`ScaleState` after every committed scale.
        resume: a state from an earlier run; sampling continues at ``resume.scale + 1``.
        record_steps: keep the tokens after every step in ``SampleOutput.steps``.
        draw: filter-and-draw function (default :func:`sample_from_logits`); the fast path
            passes a fused, sync-free one with the same distribution and random stream.
        upsample: the bicubic upsampling of the pyramid (default
            :func:`~hmar_core.pyramid.bicubic_up`, the official op); the fast path passes
            :class:`~hmar_core.pyramid.MatrixBicubicUp` (same weights, faster on GPUs).

    Returns:
        A :class:`SampleOutput`.
    """
    codebook, phis = quantizer.codebook, quantizer.phis()
    num_scales, size = len(patch_nums), patch_nums[-1]
    stateful = bool(getattr(model_fn, "stateful", False))
    pair = stateful and cfg.cfg > 0
    if cfg.cfg > 0 and not stateful and bool((labels == null_class).all()):
        # Guidance between two identical conditions is the identity ((1 + t)·u - t·u = u):
        # unconditional runs (plain in/outpainting) skip the second half. One host read.
        cfg = dataclasses.replace(cfg, cfg=0.0)
    if resume is not None and stateful:
        raise ValueError("resume is not supported for stateful (VAR) models: their KV cache is "
                         "not part of ScaleState")
    f_hat, tokens, confidences, start = _initial_state(resume, codebook, labels.shape[0], size)
    draw = sample_from_logits if draw is None else draw
    upsample = pyramid.bicubic_up if upsample is None else upsample
    keeps = [constraint.keep(si) if constraint is not None else None for si in range(num_scales)]
    fully_kept = _fully_kept(keeps, start)  # one host read for all scales, none in the loop
    steps: list[list[torch.Tensor]] = []
    x_ns = None if start == 0 else pyramid.next_scale_input(f_hat, patch_nums[start])

    for si in range(start, num_scales):
        pn, keep = patch_nums[si], keeps[si]
        if fully_kept[si]:
            # Entirely kept (e.g. "strength" scales): no random draws, and no network pass
            # unless the model is stateful (VAR), whose KV cache needs this scale.
            if stateful:
                guided_logits(model_fn, labels, null_class, cfg_weight(cfg.cfg, si, num_scales),
                              ScaleInput(si, x_ns), pair=pair)
            idx = constraint.source(si)  # type: ignore[union-attr]
            confidence = torch.ones(idx.shape, dtype=codebook.dtype, device=idx.device)
            scale_steps = [idx]
        else:
            weight = cfg_weight(cfg.cfg, si, num_scales)
            logits = guided_logits(model_fn, labels, null_class, weight, ScaleInput(si, x_ns),
                                   pair=pair)
            idx, probs = draw(logits, cfg.top_k, cfg.top_p, generator)
            confidence = probs.gather(-1, idx[..., None])[..., 0]  # (B, n)
            if keep is not None:
                idx = torch.where(keep, constraint.source(si), idx)  # type: ignore[union-attr]
            scale_steps = [idx]
            remaining = remask_counts(schedule[si]) if pn * pn > 1 else []
            if remaining:
                idx, confidence = _refine(
                    model_fn, cfg, labels, null_class, si, pn, idx, confidence, keep,
                    remaining, f_hat, phis[si], codebook, generator, scale_steps, draw,
                    upsample,
                )
            if keep is not None:
                confidence = torch.where(keep, torch.ones_like(confidence), confidence)
        h_BChw = pyramid.embed_tokens(idx, codebook, pn)
        f_hat = pyramid.accumulate(f_hat, h_BChw, phis[si], si == num_scales - 1, upsample)
        tokens.append(idx)
        confidences.append(confidence)
        if record_steps:
            steps.append(scale_steps)
        if si + 1 < num_scales:
            x_ns = pyramid.next_scale_input(f_hat, patch_nums[si + 1])
        if on_scale is not None:
            on_scale(ScaleState(si, list(tokens), f_hat, confidence))
    return SampleOutput(tokens, f_hat, confidences, labels, steps)


def _initial_state(
    resume: ScaleState | None, codebook: torch.Tensor, batch: int, size: int
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], int]:
    """``(f_hat, tokens, confidences, first scale to sample)``: empty, or after ``resume``."""
    if resume is None:
        return codebook.new_zeros(batch, codebook.shape[1], size, size), [], [], 0
    confidences = [torch.ones_like(t, dtype=codebook.dtype) for t in resume.tokens]
    confidences[-1] = resume.confidence
    return resume.f_hat, list(resume.tokens), confidences, resume.scale + 1


def _refine(
    model_fn: ScaleModel,
    cfg: SamplerConfig,
    labels: torch.Tensor,
    null_class: int,
    si: int,
    pn: int,
    idx: torch.Tensor,
    confidence: torch.Tensor,
    keep: torch.Tensor | None,
    remaining: list[int],
    f_hat: torch.Tensor,
    phi: Callable[[torch.Tensor], torch.Tensor],
    codebook: torch.Tensor,
    generator: torch.Generator,
    scale_steps: list[torch.Tensor],
    draw: DrawFn,
    upsample: pyramid.Upsample,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked refinement of one scale: re-predict the least confident tokens, step by step.

    ``remaining[j]`` tokens are masked before step j (official counts). With a constraint,
    counts are scaled to each sample's number of free positions (at least one while any is
    free) and kept positions rank as infinitely confident, so they are never masked.
    """
    n = pn * pn
    if keep is None:
        free_B = torch.full_like(idx[:, 0], n)
    else:
        free_B = (~keep).sum(-1)
        confidence = confidence.masked_fill(keep, float("inf"))
    masked = None
    weight = cfg.cfg * cfg.mask_cfg_ratio
    for count in remaining:
        counts_B = _scaled_counts(count, n, free_B)
        if masked is None:
            masked = lowest_confidence(confidence, counts_B)
        else:  # keep masked only the least confident of the currently masked positions
            masked = masked & lowest_confidence(confidence.masked_fill(~masked, float("inf")),
                                                counts_B)
        x_ns, x_mask = pyramid.mask_step_input(f_hat, pyramid.embed_tokens(idx, codebook, pn),
                                               phi, pn, upsample)
        logits = guided_logits(model_fn, labels, null_class, weight,
                               ScaleInput(si, x_ns, x_mask, masked, "mask"))
        new_idx, probs = draw(logits, cfg.top_k, cfg.top_p, generator)
        idx = torch.where(masked, new_idx, idx)
        new_conf = probs.gather(-1, new_idx[..., None])[..., 0]
        confidence = torch.where(masked, new_conf, confidence)
        scale_steps.append(idx)
    if keep is not None:
        confidence = confidence.masked_fill(keep, 1.0)
    return idx, confidence


def _fully_kept(keeps: Sequence[torch.Tensor | None], start: int) -> list[bool]:
    """Per scale: does the constraint keep every token? One host read for all scales."""
    flags = [False] * len(keeps)
    checks = [(si, keep.all()) for si, keep in enumerate(keeps)
              if keep is not None and si >= start]
    if checks:
        values = torch.stack([flag for _, flag in checks]).tolist()
        for (si, _), value in zip(checks, values):
            flags[si] = bool(value)
    return flags


def _scaled_counts(count: int, n: int, free_B: torch.Tensor) -> torch.Tensor:
    """Official count when all n positions are free; else scaled to the free positions."""
    if count == 0:
        return torch.zeros_like(free_B)
    scaled = torch.ceil(free_B.to(torch.float64) * count / n).to(free_B.dtype)
    return torch.where(free_B == n, torch.full_like(free_B, count), scaled.clamp(max=free_B))
