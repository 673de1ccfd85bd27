"""The network seen through token pyramids: teacher forcing and per-scale inference.

:class:`TokenModel` pairs the transformer with the tokenizer's quantiser so that callers speak
in token ids: ``model(labels, tokens, masked=None) -> logits (B, L, V)``. It owns no parameters
of its own (both parts are registered by the :class:`~hmar_core.pipeline.Pipeline`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from . import pyramid
from .sampler import ScaleInput
from .tokenizer import MultiScaleQuantizer
from .transformer import HMARTransformer, KVCache

__all__ = ["ScaleRunner", "TokenModel"]


class TokenModel(nn.Module):
    """Teacher-forced logits from token pyramids (eval mode: no label dropout ever)."""

    def __init__(self, transformer: HMARTransformer, quantizer: MultiScaleQuantizer) -> None:
        super().__init__()
        self.transformer = transformer
        self.quantizer = quantizer

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.transformer.cfg.patch_nums

    def inputs(
        self, tokens: Sequence[torch.Tensor], masked: Sequence[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(x_ns, x_mask, masked_BL)`` for :meth:`HMARTransformer.forward` from token ids."""
        patch_nums = self.patch_nums
        if len(tokens) != len(patch_nums):
            raise ValueError(f"expected {len(patch_nums)} scales of tokens, got {len(tokens)}")
        codebook, phis = self.quantizer.codebook, self.quantizer.phis()
        x_ns = pyramid.teacher_forcing_input(tokens, codebook, phis, patch_nums)
        if masked is None:
            return x_ns, None, None
        if len(masked) != len(patch_nums):
            raise ValueError(f"expected {len(patch_nums)} scales of masks, got {len(masked)}")
        for si, m in enumerate(masked):
            if m.dtype != torch.bool or m.shape != tokens[si].shape:
                raise ValueError(f"masked[{si}] must be bool {tuple(tokens[si].shape)}, "
                                 f"got {m.dtype} {tuple(m.shape)}")
        if bool(masked[0].any()):
            raise ValueError("scale 0 (the class token's prediction) can never be masked")
        x_mask = pyramid.masked_teacher_input(tokens, codebook, phis, patch_nums)
        return x_ns, x_mask, torch.cat(list(masked[1:]), dim=1)

    def forward(
        self,
        labels: torch.Tensor,
        tokens: Sequence[torch.Tensor],
        masked: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, V) float32; ``masked=None`` = next-scale branch, else mask branch.

        Args:
            labels: (B,) int64 class ids (``num_classes`` = unconditional).
            tokens: the whole token pyramid, list of (B, pn²) int64.
            masked: per scale (B, pn²) bool, True = the mask branch sees [MASK] there (scale 0
                always False; sets may differ per sample).
        """
        x_ns, x_mask, masked_BL = self.inputs(tokens, masked)
        return self.transformer(labels, x_ns, x_mask, masked_BL)


class ScaleRunner:
    """The :class:`~hmar_core.sampler.ScaleModel` callable for one sampling run.

    For VAR models it owns the run's :class:`KVCache` (a new runner per run).
    """

    def __init__(self, transformer: HMARTransformer) -> None:
        self.transformer = transformer
        self.cache = KVCache() if transformer.cfg.kind == "var" else None
        self.stateful = self.cache is not None

    def __call__(self, labels: torch.Tensor, inputs: ScaleInput) -> torch.Tensor:
        return self.transformer.forward_scale(
            labels, inputs.scale, inputs.x_ns, x_mask=inputs.x_mask, masked=inputs.masked,
            branch=inputs.branch, cache=self.cache)
