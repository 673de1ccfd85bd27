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
from typing import Any, Protocol, runtime_checkable

import torch

from ..sampler import (
    Drawer,
    SampleOutput,
    ScaleInput,
    Weight,
    sample,
    sample_from_logits,
    top_k_top_p_filter,
)

__all__ = [
    "GUMBEL",
    "GuidedScaleModel",
    "argmax_choose",
    "draw",
    "exponential_noise",
    "fast_sample",
    "fused_top_k_top_p_filter",
    "sample_from_logits_fast",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class GuidedScaleModel(Protocol):
    """A :class:`~hmar_core.sampler.ScaleModel` that also applies CFG itself.

    ``guided(labels (B,), null_class, weight, ScaleInput) -> (B, n, V) float32`` equals
    :func:`~hmar_core.sampler.guided_logits` of the same model (``pair`` included).
    """

    def guided(self, labels: torch.Tensor, null_class: int, weight: Weight,
               inputs: ScaleInput) -> torch.Tensor: ...


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


def exponential_noise(shape: tuple[int, ...], device: torch.device,
                      generator: torch.Generator) -> torch.Tensor:
    """``q ~ Exp(1)`` of ``shape`` (float32) from ``generator``: one step's random draw."""
    return torch.empty(shape, dtype=torch.float32, device=device).exponential_(
        1, generator=generator)


def argmax_choose(probs: torch.Tensor, noise: torch.Tensor | None,
                  generator: torch.Generator) -> torch.Tensor:
    """``argmax(probs / q)`` over the last dimension: the Gumbel-max form ``multinomial``
    uses for one sample, given the noise ``q`` (pure: no draw, no host sync)."""
    del generator
    if noise is None:
        raise ValueError("argmax_choose needs the noise of exponential_noise")
    return (probs / noise).argmax(dim=-1)


#: The fast draw: the fused filter and the Gumbel-max choice (the same tokens as
#: :data:`~hmar_core.sampler.MULTINOMIAL` for the same generator).
GUMBEL = Drawer(fused_top_k_top_p_filter, exponential_noise, argmax_choose)


def draw(probs_NV: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One sample per row, exactly as ``torch.multinomial(probs, 1, replacement=True)``.

    ``argmax(probs / q)`` with ``q ~ Exp(1)`` of the same shape drawn from ``generator`` (the
    Gumbel-max form ``multinomial`` uses for one sample); no validity checks, no host sync.

    Returns:
        (N,) int64 indices.
    """
    noise = exponential_noise(tuple(probs_NV.shape), probs_NV.device, generator)
    return argmax_choose(probs_NV, noise, generator)


def sample_from_logits_fast(
    logits_BnV: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~hmar_core.sampler.sample_from_logits` with :data:`GUMBEL`.

    Returns:
        tokens (B, n) int64 and probs (B, n, V), the distribution they were drawn from.
    """
    return sample_from_logits(logits_BnV, top_k, top_p, generator, GUMBEL)


# --------------------------------------------------------------------------------- the loop
def fast_sample(*args: Any, **kwargs: Any) -> SampleOutput:
    """:func:`hmar_core.sampler.sample` with the fused, sync-free filter and draw.

    Same arguments, same random draws and the same result for the same logits; models with a
    ``guided`` method (the fast runner) run both CFG halves in one pass.
    """
    return sample(*args, drawer=GUMBEL, **kwargs)
