"""Training-time multi-scale residual quantisation and codebook maintenance.

Shape legend: B = batch, C = latent channels, H×W = latent grid, pn = side of a scale, V =
vocab, N = number of latent vectors.

:func:`quantize_for_training` is the forward of the quantiser during tokenizer training, written
with the pure functions of :mod:`hmar_core.pyramid` so that its tokens and ``f_hat`` are the
inference ones (``MultiScaleVQTokenizer.encode_with_fhat``) exactly. On top it returns the VQ
losses and a straight-through latent:

* commitment = mean over scales of ‖sg(f_hat_si) − f‖² (pulls the encoder to its codes),
* codebook  = mean over scales of ‖f_hat_si − sg(f)‖² (pulls codes and phi convs to the
  encoder output; cumulative ``f_hat`` after each scale, as in VAR),
* ``f_hat_st = f + sg(f_hat − f)``: the decoder sees the quantised latent, its gradient goes
  to the encoder unchanged (straight-through estimator).

:class:`CodebookMonitor` counts code usage per scale and re-seeds codes that went unused over
an interval with latent vectors of the current batch (all ranks), drawn with an explicit
generator. At step 0 this initialises the codebook from the encoder's outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hmar_core import pyramid
from hmar_core.pyramid import Phi

from .distributed import DistContext

__all__ = ["CodebookMonitor", "VQTrainOutput", "quantize_for_training"]

logger = logging.getLogger(__name__)


@dataclass
class VQTrainOutput:
    """Result of :func:`quantize_for_training`.

    Attributes:
        f_hat_st: (B, C, H, W) straight-through quantised latent for the decoder.
        f_hat: (B, C, H, W) the quantised latent itself (no gradient to the encoder).
        commitment: scalar commitment loss (before ``beta``).
        codebook: scalar codebook loss.
        tokens: per scale (B, pn²) int64 indices (identical to inference).
        residuals: (B·L, C) the vectors that were quantised at every scale (detached),
            sample-major (so that gathering ranks gives the global batch's order), the
            candidates for dead-code restarts.
    """

    f_hat_st: torch.Tensor
    f_hat: torch.Tensor
    commitment: torch.Tensor
    codebook: torch.Tensor
    tokens: list[torch.Tensor]
    residuals: torch.Tensor


def quantize_for_training(
    f_BCHW: torch.Tensor,
    codebook: torch.Tensor,
    phis: Sequence[Phi],
    patch_nums: Sequence[int],
) -> VQTrainOutput:
    """Residual multi-scale quantisation with VQ losses and a straight-through estimator.

    Args:
        f_BCHW: encoder latent after ``quant_conv`` (float32), (B, C, H, W), H = W =
            ``patch_nums[-1]``.
        codebook: (V, C) code vectors (a parameter: receives the codebook-loss gradient).
        phis: one phi module per scale (``quantizer.phis()``).
        patch_nums: sides of the scales.

    Returns:
        :class:`VQTrainOutput`.
    """
    size = f_BCHW.shape[-1]
    if f_BCHW.shape[-2] != size or patch_nums[-1] != size:
        raise ValueError(f"latent of shape {tuple(f_BCHW.shape)} does not fit pyramid "
                         f"{tuple(patch_nums)} (last scale must equal the latent side)")
    f_target = f_BCHW.detach()
    f_rest, f_hat = f_target, torch.zeros_like(f_target)
    commitment = f_BCHW.new_zeros(())
    codebook_loss = f_BCHW.new_zeros(())
    tokens, residuals = [], []
    num_scales = len(patch_nums)
    for si, pn in enumerate(patch_nums):
        is_last = si == num_scales - 1
        z_BChw = f_rest if is_last else pyramid.area_down(f_rest, pn)
        idx_Bl = pyramid.nearest_code(z_BChw, codebook.detach())
        h_BChw = pyramid.embed_tokens(idx_Bl, codebook, pn)  # gradient reaches the codes
        h_BCHW = phis[si](h_BChw if is_last else pyramid.bicubic_up(h_BChw, size))
        f_hat = f_hat + h_BCHW
        f_rest = f_rest - h_BCHW.detach()
        commitment = commitment + F.mse_loss(f_hat.detach(), f_BCHW)
        codebook_loss = codebook_loss + F.mse_loss(f_hat, f_target)
        tokens.append(idx_Bl)
        residuals.append(z_BChw.flatten(2).transpose(1, 2))  # (B, pn², C)
    f_hat_st = f_BCHW + (f_hat.detach() - f_target)
    return VQTrainOutput(
        f_hat_st=f_hat_st,
        f_hat=f_hat.detach(),
        commitment=commitment / num_scales,
        codebook=codebook_loss / num_scales,
        tokens=tokens,
        residuals=torch.cat(residuals, dim=1).flatten(0, 1),  # sample-major (B·L, C)
    )


class CodebookMonitor:
    """Code-usage counts per scale since the last restart, and dead-code restarts.

    Args:
        vocab_size: V.
        num_scales: number of scales.
        device: where the counts live.
    """

    def __init__(self, vocab_size: int, num_scales: int, device: torch.device) -> None:
        self.counts = torch.zeros(num_scales, vocab_size, dtype=torch.int64, device=device)

    def record(self, tokens: Sequence[torch.Tensor]) -> None:
        """Add one batch's token pyramid (list of (B, pn²)) to the local counts."""
        vocab = self.counts.shape[1]
        for si, idx in enumerate(tokens):
            self.counts[si] += torch.bincount(idx.flatten(), minlength=vocab)

    def usage(self, ctx: DistContext) -> dict[str, float]:
        """Fraction of codes used and codebook perplexity over the interval (all ranks)."""
        counts = ctx.all_reduce_sum(self.counts.clone()).sum(0).double()
        total = counts.sum().clamp_min(1)
        probs = counts / total
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
        return {"codebook/used_fraction": float((counts > 0).double().mean()),
                "codebook/perplexity": float(entropy.exp())}

    @torch.no_grad()
    def restart_dead_codes(
        self,
        codebook: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        candidates: torch.Tensor,
        threshold: float,
        generator: torch.Generator,
        ctx: DistContext,
    ) -> int:
        """Re-seed codes used fewer than ``threshold`` times; reset the counts.

        Args:
            codebook: (V, C) the code parameter (modified in place).
            optimizer: its AdamW; the moments of re-seeded rows are zeroed.
            candidates: (N, C) this rank's latent vectors of the current batch.
            threshold: usage count below which a code is dead.
            generator: CPU generator choosing the candidates (same seed on every rank).
            ctx: the process context (counts summed, candidates gathered in rank order).

        Returns:
            Number of re-seeded codes.
        """
        counts = ctx.all_reduce_sum(self.counts.clone()).sum(0)  # (V,)
        self.counts.zero_()
        dead = (counts.double() < threshold).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        pool = ctx.all_gather_cat(candidates.float().contiguous())  # (N·world, C)
        if pool.shape[0] >= dead.numel():
            choice = torch.randperm(pool.shape[0], generator=generator)[: dead.numel()]
        else:
            choice = torch.randint(pool.shape[0], (dead.numel(),), generator=generator)
        codebook[dead] = pool[choice.to(pool.device)].to(codebook.dtype)
        state = optimizer.state.get(codebook, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][dead] = 0
        return int(dead.numel())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["counts"].shape != self.counts.shape:
            raise ValueError(f"codebook counts of shape {tuple(state['counts'].shape)} do not "
                             f"fit {tuple(self.counts.shape)}")
        self.counts.copy_(state["counts"])
