"""Sync-free sampling for the fast path: fused top-k/top-p, the multinomial draw, the loop.

Shape legend: B = batch, n = tokens of the current scale (pn²), N = B·n rows, V = vocab,
k = top-k, C = latent channels.

:func:`fused_top_k_top_p_filter` keeps exactly the set :func:`~hmar_core.sampler.
top_k_top_p_filter` keeps, but runs the nucleus inside the (N, k) top-k values instead of
sorting all V logits. :func:`draw` replaces ``torch.multinomial(probs, 1, replacement=True)``
by the same computation (``argmax(probs / q)``, ``q ~ Exp(1)`` drawn as one (N, V) tensor from
the generator — what ``multinomial`` does for one sample), without its validity checks, so the
same seed gives the same tokens and nothing waits for the device.

:func:`fast_sample` is :func:`hmar_core.sampler.sample` with these two pieces and guidance done
by the model (``GuidedScaleModel.guided``: both CFG halves in one captured graph). It makes the
same random draws in the same order; ``tests/test_fast.py`` checks that it returns the
reference's tokens for the same seed, with and without an edit constraint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from .. import pyramid
from ..config import SamplerConfig
from ..sampler import (
    Quantizer,
    SampleOutput,
    ScaleConstraint,
    ScaleModel,
    ScaleState,
    _scaled_counts,
    guided_logits,
    lowest_confidence,
    top_k_top_p_filter,
)
from ..schedules import Schedule, cfg_weight, remask_counts

__all__ = [
    "GuidedScaleModel",
    "draw",
    "fast_sample",
    "fused_top_k_top_p_filter",
    "sample_from_logits_fast",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class GuidedScaleModel(Protocol):
    """A :class:`~hmar_core.sampler.ScaleModel` that also applies CFG itself.

    ``guided(labels (B,), null_class, scale, weight, x_ns (B, n, C) | None, *, x_mask=None,
    masked=None, branch="ns") -> (B, n, V) float32`` equals
    :func:`~hmar_core.sampler.guided_logits` of the same model (``pair`` included).
    """

    def guided(
        self,
        labels: torch.Tensor,
        null_class: int,
        scale: int,
        weight: float,
        x_ns: torch.Tensor | None,
        *,
        x_mask: torch.Tensor | None = None,
        masked: torch.Tensor | None = None,
        branch: str = "ns",
    ) -> torch.Tensor: ...


# ----------------------------------------------------------------------------- the filter
def fused_top_k_top_p_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Same contract and kept set as :func:`~hmar_core.sampler.top_k_top_p_filter`.

    With both filters on, one ``topk`` of k sorted values replaces the full sort over V: the
    reference's ascending cumulative softmax over the top-k-filtered row is computed on the k
    values (plus any logits tied with the k-th value that ``topk`` left out, which the
    reference keeps), the dropped entries form a prefix of that order, and the result keeps
    every logit ≥ the smallest surviving value. Differences from the reference are limited to
    rounding exactly at the nucleus boundary (the reference's order inside a tie group there is
    itself arbitrary).

    Args:
        logits: (..., V) float logits.
        top_k: keep the k largest (ties kept); 0 disables.
        top_p: nucleus mass; 0 (or ≥ 1) disables.

    Returns:
        A new tensor, filtered entries set to -inf.
    """
    vocab = logits.shape[-1]
    if not (0 < top_k < vocab and 0.0 < top_p < 1.0):
        return top_k_top_p_filter(logits, top_k, top_p)
    values = logits.topk(top_k, dim=-1, largest=True, sorted=True).values  # (..., k) descending
    ascending = values.flip(-1)
    kth = ascending[..., :1]  # the k-th largest value
    extra = (logits >= kth).sum(-1, keepdim=True) - top_k  # ties beyond k, (..., 1) int64
    weights = (ascending - ascending[..., -1:]).exp()  # exp(x - max), as softmax does
    extra_f = extra.to(weights.dtype)
    probs = weights / (weights.sum(-1, keepdim=True) + extra_f * weights[..., :1])
    cumulative = probs.cumsum(-1) + extra_f * probs[..., :1]
    drop = cumulative <= (1 - top_p)
    drop[..., -1] = False  # the largest entry is always kept
    first_kept = drop.sum(-1, keepdim=True)  # dropped entries are a prefix of the ascending order
    threshold = ascending.gather(-1, first_kept)
    return logits.masked_fill(logits < threshold, float("-inf"))


def draw(probs_NV: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One sample per row, exactly as ``torch.multinomial(probs, 1, replacement=True)``.

    ``argmax(probs / q)`` with ``q ~ Exp(1)`` of the same shape drawn from ``generator`` (the
    Gumbel-max form ``multinomial`` uses for one sample); no validity checks, no host sync.

    Returns:
        (N,) int64 indices.
    """
    q = torch.empty_like(probs_NV).exponential_(1, generator=generator)
    return (probs_NV / q).argmax(dim=-1)


def sample_from_logits_fast(
    logits_BnV: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~hmar_core.sampler.sample_from_logits` with the fused filter and :func:`draw`.

    Returns:
        tokens (B, n) int64 and probs (B, n, V), the distribution they were drawn from.
    """
    batch, n, vocab = logits_BnV.shape
    probs = fused_top_k_top_p_filter(logits_BnV, top_k, top_p).softmax(dim=-1)
    idx = draw(probs.view(-1, vocab), generator)
    return idx.view(batch, n), probs


# --------------------------------------------------------------------------------- the loop
def _guided(
    model_fn: ScaleModel | GuidedScaleModel,
    labels: torch.Tensor,
    null_class: int,
    scale: int,
    weight: float,
    x_ns: torch.Tensor | None,
    pair: bool,
    **inputs: torch.Tensor | str | None,
) -> torch.Tensor:
    if isinstance(model_fn, GuidedScaleModel):
        return model_fn.guided(labels, null_class, scale, weight, x_ns, **inputs)  # type: ignore
    return guided_logits(model_fn, labels, null_class, scale, weight, x_ns,  # type: ignore
                         pair=pair, **inputs)


def fast_sample(
    model_fn: ScaleModel | GuidedScaleModel,
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
) -> SampleOutput:
    """:func:`hmar_core.sampler.sample` without host synchronisation inside the scale loop.

    Same arguments, same random draws and the same result for the same logits. The only host
    reads happen before the loop: which scales an edit keeps entirely (one sync for all).
    """
    codebook, phis = quantizer.codebook, quantizer.phis()
    num_scales, size = len(patch_nums), patch_nums[-1]
    stateful = bool(getattr(model_fn, "stateful", False))
    pair = stateful and cfg.cfg > 0
    batch = labels.shape[0]
    if resume is not None and stateful:
        raise ValueError("resume is not supported for stateful (VAR) models: their KV cache is "
                         "not part of ScaleState")
    if resume is None:
        f_hat = codebook.new_zeros(batch, codebook.shape[1], size, size)
        tokens: list[torch.Tensor] = []
        confidences: list[torch.Tensor] = []
        start = 0
    else:
        f_hat, start = resume.f_hat, resume.scale + 1
        tokens = list(resume.tokens)
        confidences = [torch.ones_like(t, dtype=codebook.dtype) for t in tokens]
        confidences[-1] = resume.confidence
    keeps = [constraint.keep(si) if constraint is not None else None
             for si in range(num_scales)]
    fully_kept = _fully_kept(keeps, start)
    steps: list[list[torch.Tensor]] = []
    x_ns = None if start == 0 else pyramid.next_scale_input(f_hat, patch_nums[start])

    for si in range(start, num_scales):
        pn, keep = patch_nums[si], keeps[si]
        if fully_kept[si]:  # no random draws; a network pass only to fill a VAR cache
            if stateful:
                _guided(model_fn, labels, null_class, si, cfg_weight(cfg.cfg, si, num_scales),
                        x_ns, pair)
            idx = constraint.source(si)  # type: ignore[union-attr]
            confidence = torch.ones(idx.shape, dtype=codebook.dtype, device=idx.device)
            scale_steps = [idx]
        else:
            weight = cfg_weight(cfg.cfg, si, num_scales)
            logits = _guided(model_fn, labels, null_class, si, weight, x_ns, pair)
            idx, probs = sample_from_logits_fast(logits, cfg.top_k, cfg.top_p, generator)
            confidence = probs.gather(-1, idx[..., None])[..., 0]  # (B, n)
            if keep is not None:
                idx = torch.where(keep, constraint.source(si), idx)  # type: ignore[union-attr]
            scale_steps = [idx]
            remaining = remask_counts(schedule[si]) if pn * pn > 1 else []
            if remaining:
                idx, confidence = _refine(
                    model_fn, cfg, labels, null_class, si, pn, idx, confidence, keep,
                    remaining, f_hat, phis[si], codebook, generator, scale_steps,
                )
            if keep is not None:
                confidence = torch.where(keep, torch.ones_like(confidence), confidence)
        h_BChw = pyramid.embed_tokens(idx, codebook, pn)
        f_hat = pyramid.accumulate(f_hat, h_BChw, phis[si], si == num_scales - 1)
        tokens.append(idx)
        confidences.append(confidence)
        if record_steps:
            steps.append(scale_steps)
        if si + 1 < num_scales:
            x_ns = pyramid.next_scale_input(f_hat, patch_nums[si + 1])
        if on_scale is not None:
            on_scale(ScaleState(si, list(tokens), f_hat, confidence))
    return SampleOutput(tokens, f_hat, confidences, labels, steps)


def _fully_kept(keeps: Sequence[torch.Tensor | None], start: int) -> list[bool]:
    """Per scale: does the constraint keep every token? One host read for all scales."""
    flags = [False] * len(keeps)
    checks = [(si, keep.all()) for si, keep in enumerate(keeps) if keep is not None
              and si >= start]
    if checks:
        values = torch.stack([flag for _, flag in checks]).tolist()
        for (si, _), value in zip(checks, values):
            flags[si] = bool(value)
    return flags


def _refine(
    model_fn: ScaleModel | GuidedScaleModel,
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked refinement of one scale (the reference's ``_refine``, sync-free sampling).

    Like the reference, mask steps never force both CFG halves (``pair``): only HMAR models
    have a mask branch, and they are stateless.
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
                                               phi, pn)
        logits = _guided(model_fn, labels, null_class, si, weight, x_ns, False,
                         x_mask=x_mask, masked=masked, branch="mask")
        new_idx, probs = sample_from_logits_fast(logits, cfg.top_k, cfg.top_p, generator)
        idx = torch.where(masked, new_idx, idx)
        new_conf = probs.gather(-1, new_idx[..., None])[..., 0]
        confidence = torch.where(masked, new_conf, confidence)
        scale_steps.append(idx)
    if keep is not None:
        confidence = confidence.masked_fill(keep, 1.0)
    return idx, confidence
