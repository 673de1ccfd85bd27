"""Class edits that revise the kept coarse tokens the target class disfavours.

A class edit at strength s keeps the source's tokens of the s coarsest scales whole, and on a
small model those tokens pull many edits back to the source class. :func:`revise_coarse`
keeps of them only the tokens the target class does not disfavour: with the next-scale logits
of the source pyramid (teacher forcing: each coarse scale given the source's coarser ones), a
token is regenerated where ``log p(token | class) - log p(token | null) < tau``. Measured on
the bundled model (``docs/experiments/class_edit_revision.py``, 100 held-out images): at
strength 3, ``tau = -2`` reaches the target class as often as strength 1 while changing the
layout about as little as strength 2.

Shape legend: B = batch, n = tokens of one scale (pn²), C = latent channels, V = vocab.
"""

from __future__ import annotations

import torch

from .. import pyramid
from ..engine import EditModel
from ..sampler import ScaleInput
from .spec import EditSpec

__all__ = ["DEFAULT_CLASS_REVISE", "coarse_support", "revise_coarse"]

#: ``EditOptions.revise`` of a class edit when the caller gives none (``Pipeline.edit_class``,
#: the CLI's ``edit``, the app's class edit): the measured trade-off above.
DEFAULT_CLASS_REVISE = -2.0


@torch.no_grad()
def coarse_support(pipe: EditModel, spec: EditSpec, scales: int) -> list[torch.Tensor]:
    """Per scale ``< scales``: (B, n) float32 ``log p(source token | label) - log p(source
    token | null)``, the next-scale branch teacher-forced on the source pyramid (one pass per
    scale over both label sets, on the pipeline's engine)."""
    engine = pipe.backend
    labels = spec.labels
    batch = labels.shape[0]
    both = torch.cat([labels, torch.full_like(labels, engine.null_class)])  # (2B,)
    model_fn, _ = engine.scale_model(both)
    tokens = list(spec.source_tokens)
    quantize = engine.quantizer
    # next-scale inputs of scales 1 .. scales-1, (B, sum of their n, C)
    x_all = (pyramid.teacher_forcing_input(tokens[:scales], quantize.codebook,
                                           quantize.phis(), engine.patch_nums)
             if scales > 1 else None)
    slices = pyramid.scale_slices(engine.patch_nums)
    support = []
    for si in range(scales):
        x_ns = None
        if x_all is not None and si > 0:  # scale si's input: one position before its tokens
            x_ns = x_all[:, slices[si].start - 1: slices[si].stop - 1]
            x_ns = torch.cat([x_ns, x_ns])
        logp = model_fn(both, ScaleInput(si, x_ns)).float().log_softmax(-1)  # (2B, n, V)
        picked = logp.gather(-1, tokens[si].repeat(2, 1)[..., None])[..., 0]  # (2B, n)
        support.append(picked[:batch] - picked[batch:])
    return support


def revise_coarse(pipe: EditModel, spec: EditSpec, tau: float) -> EditSpec:
    """``spec`` with its ``strength`` scales no longer kept whole: their tokens inside the edit
    region whose :func:`coarse_support` is below ``tau`` are regenerated, the others kept."""
    if spec.strength == 0:
        return spec
    support = coarse_support(pipe, spec, spec.strength)
    regenerate = list(spec.regenerate)
    for si, score in enumerate(support):
        regenerate[si] = spec.regenerate[si] & (score < tau)
    return EditSpec(spec.source_tokens, tuple(regenerate), spec.labels, strength=0)
