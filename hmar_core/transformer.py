"""The HMAR transformer (and VAR, its block-causal sibling) as a function of its inputs.

Shape legend: B = batch, L = tokens of the whole pyramid, n = tokens of one scale (pn²),
C = width, Cvae = latent channels, V = vocab, H = heads, D = head dim.

Inputs are latents, not token ids: the next-scale input ``x_ns`` (area-downsampled f_hat of the
coarser scales) and, for the mask branch, ``x_mask`` (the scale's own contribution) with the
``masked`` positions replaced by the [MASK] embedding. Building those from token ids is the job
of :mod:`hmar_core.pyramid` (see :class:`hmar_core.model.TokenModel`).

* :meth:`HMARTransformer.forward` — teacher forcing over the whole pyramid, attention through
  :func:`kernels.attention` with the block-diagonal (HMAR) or block-causal (VAR) scale mask.
* :meth:`HMARTransformer.forward_scale` — one scale as its own sequence, no mask (HMAR is
  Markovian over scales); VAR instead appends to a :class:`KVCache` given by the caller.

Every block runs as two pure functions around its attention, :func:`_pre_attention` and
:func:`_post_attention` (:class:`BlockParts`), so training can ``torch.compile`` them
(:meth:`HMARTransformer.compile_blocks`) while the attention kernel stays outside the graphs.
By default nothing is compiled and every forward computes exactly what it did before the split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import Backend, ScaleMask, attention

from .config import TransformerConfig
from .pyramid import scale_ids, scale_slices

__all__ = ["BlockParts", "Branch", "HMARTransformer", "KVCache"]

Branch = Literal["ns", "mask"]


@dataclass
class KVCache:
    """Keys and values of every block for VAR's block-causal inference (grows per scale)."""

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)

    def extend(
        self, block: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this scale's (B, H, n, D) keys/values and return all cached so far."""
        if block in self.keys:
            k = torch.cat([self.keys[block], k], dim=2)
            v = torch.cat([self.values[block], v], dim=2)
        self.keys[block], self.values[block] = k, v
        return k, v


def _qkv(
    h_BLC: torch.Tensor,
    qkv_weight: torch.Tensor,
    q_bias: torch.Tensor,
    v_bias: torch.Tensor,
    log_scale: torch.Tensor,
    heads: int,
    max_scale_mul: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B, H, L, D) of ``h``: k has no bias, q and k are L2-normalised, q carries the
    learnt per-head temperature (a strided view of one (B, L, 3C) projection)."""
    batch, length, _ = h_BLC.shape
    bias = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    qkv = F.linear(h_BLC, qkv_weight, bias).view(batch, length, 3, heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, D)
    scale_mul = log_scale.clamp_max(max_scale_mul).exp()
    # under autocast the norms run in float32: bring q, k back to v's (compute) dtype
    q = F.normalize(q, dim=-1).mul(scale_mul).to(v.dtype)
    k = F.normalize(k, dim=-1).to(v.dtype)
    return q, k, v


def _pre_attention(
    x_BLC: torch.Tensor,
    cond_BC: torch.Tensor,
    ada_weight: torch.Tensor,
    ada_bias: torch.Tensor,
    qkv_weight: torch.Tensor,
    q_bias: torch.Tensor,
    v_bias: torch.Tensor,
    log_scale: torch.Tensor,
    heads: int,
    eps: float,
    max_scale_mul: float,
    contiguous: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A block up to its attention: AdaLN modulation, LayerNorm, q/k/v.

    Returns:
        q, k, v (B, H, L, D) (contiguous when asked: the attention kernels want that) and the
        six AdaLN vectors ``ada`` (B, 1, 6, C) for :func:`_post_attention`.
    """
    width = x_BLC.shape[-1]
    ada = F.linear(F.silu(cond_BC), ada_weight, ada_bias).view(-1, 1, 6, width)
    _, _, scale1, _, shift1, _ = ada.unbind(2)  # each (B, 1, C)
    h = F.layer_norm(x_BLC, x_BLC.shape[-1:], eps=eps).mul(scale1 + 1).add(shift1)
    q, k, v = _qkv(h, qkv_weight, q_bias, v_bias, log_scale, heads, max_scale_mul)
    if contiguous:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return q, k, v, ada


def _post_attention(
    x_BLC: torch.Tensor,
    out_BHLD: torch.Tensor,
    ada: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
    keep_attn: torch.Tensor | None,
    keep_ffn: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """A block after its attention: output projection, gated residuals, LayerNorm, MLP.

    Args:
        keep_attn, keep_ffn: stochastic-depth multipliers (B, 1, 1) (0 or 1/keep), or ``None``.

    Returns:
        The block's output (B, L, C).
    """
    batch, length, width = x_BLC.shape
    gamma1, gamma2, _, scale2, _, shift2 = ada.unbind(2)  # each (B, 1, C)
    out = out_BHLD.transpose(1, 2).reshape(batch, length, width)  # (B, L, C)
    branch = F.linear(out, proj_weight, proj_bias).mul(gamma1)
    x_BLC = x_BLC + (branch if keep_attn is None else branch * keep_attn)
    h = F.layer_norm(x_BLC, x_BLC.shape[-1:], eps=eps).mul(scale2 + 1).add(shift2)
    hidden = F.gelu(F.linear(h, fc1_weight, fc1_bias), approximate="tanh")
    branch = F.linear(hidden, fc2_weight, fc2_bias).mul(gamma2)
    return x_BLC + (branch if keep_ffn is None else branch * keep_ffn)


@dataclass(frozen=True)
class BlockParts:
    """The two halves of :class:`AdaLNBlock` around its attention (plain or compiled)."""

    pre_attention: Callable[..., tuple[torch.Tensor, ...]] = _pre_attention
    post_attention: Callable[..., torch.Tensor] = _post_attention

    @classmethod
    def compiled(cls, **compile_kwargs: Any) -> BlockParts:
        """Both halves through ``torch.compile`` (one compiled function shared by all blocks:
        parameters are arguments, so every block of one shape reuses one graph)."""
        return cls(torch.compile(_pre_attention, **compile_kwargs),
                   torch.compile(_post_attention, **compile_kwargs))


_EAGER_PARTS = BlockParts()


class SelfAttention(nn.Module):
    """Multi-head attention with L2-normalised q/k and a learnt per-head temperature.

    Holds the weights and :meth:`attend`; q/k/v come from :func:`_pre_attention` and the output
    projection runs in :func:`_post_attention` (one block pass, see :class:`AdaLNBlock`).
    """

    def __init__(self, width: int, heads: int, max_scale_mul: float,
                 backend: Backend = "auto") -> None:
        super().__init__()
        self.heads, self.max_scale_mul, self.backend = heads, max_scale_mul, backend
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.log_scale = nn.Parameter(torch.full((1, heads, 1, 1), math.log(4.0)))
        self.proj = nn.Linear(width, width)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: ScaleMask | None,
        cache: KVCache | None = None,
        block_index: int = 0,
    ) -> torch.Tensor:
        """softmax(q·kᵀ)·v (B, H, L, D): masked teacher forcing, or SDPA over a KV cache."""
        if cache is not None:
            k, v = cache.extend(block_index, k, v)
            return F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return attention(q, k, v, mask, scale=1.0, backend=self.backend)


class FeedForward(nn.Module):
    """The MLP's weights (fc1 → tanh-GELU → fc2 runs in :func:`_post_attention`)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)


class AdaLNBlock(nn.Module):
    """Transformer block whose LayerNorms are modulated by the class condition (AdaLN).

    The block runs as :func:`_pre_attention`, the attention, :func:`_post_attention`.
    ``compiled_parts`` (set by :meth:`HMARTransformer.compile_blocks`) replaces the two halves
    by compiled ones in training passes without a KV cache; evaluation and inference always
    run the plain halves.
    """

    def __init__(self, cfg: TransformerConfig, drop_path: float) -> None:
        super().__init__()
        width = cfg.width
        self.eps, self.drop_path = cfg.norm_eps, drop_path
        self.attn = SelfAttention(width, cfg.heads, cfg.max_scale_mul, cfg.attention_backend)
        self.ffn = FeedForward(width, round(width * cfg.mlp_ratio))
        self.ada_lin = nn.Linear(width, 6 * width)
        self.compiled_parts: BlockParts | None = None

    def _keep(self, x_BLC: torch.Tensor) -> torch.Tensor | None:
        """Stochastic-depth multipliers (B, 1, 1) in the residual branches' dtype (the
        autocast dtype, else the weights'), drawn from the default torch RNG; training only."""
        if not self.training or self.drop_path == 0.0:
            return None
        device_type = x_BLC.device.type
        dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                 else self.attn.proj.weight.dtype)
        keep = 1.0 - self.drop_path
        mask = torch.empty(x_BLC.shape[0], 1, 1, dtype=dtype, device=x_BLC.device)
        return mask.bernoulli_(keep).div_(keep)

    def forward(
        self,
        x_BLC: torch.Tensor,
        cond_BC: torch.Tensor,
        mask: ScaleMask | None,
        cache: KVCache | None = None,
        block_index: int = 0,
    ) -> torch.Tensor:
        use_compiled = self.compiled_parts is not None and self.training and cache is None
        parts = self.compiled_parts if use_compiled else _EAGER_PARTS
        attn, ffn = self.attn, self.ffn
        q, k, v, ada = parts.pre_attention(
            x_BLC, cond_BC, self.ada_lin.weight, self.ada_lin.bias, attn.qkv.weight,
            attn.q_bias, attn.v_bias, attn.log_scale, attn.heads, self.eps, attn.max_scale_mul,
            cache is None)
        out = attn.attend(q, k, v, mask, cache, block_index)  # (B, H, L, D)
        keep_attn = self._keep(x_BLC)  # drawn in the same order as before: attention, MLP
        keep_ffn = self._keep(x_BLC)
        return parts.post_attention(
            x_BLC, out, ada, attn.proj.weight, attn.proj.bias, ffn.fc1.weight, ffn.fc1.bias,
            ffn.fc2.weight, ffn.fc2.bias, keep_attn, keep_ffn, self.eps)


class AdaLNHead(nn.Module):
    """AdaLN-modulated LayerNorm followed by the vocabulary projection, in float32.

    With ``autocast_logits`` (and autocast active) the modulation stays in float32 but the
    projection runs under the autocast (bf16/fp16 logits; a training speed option: the loss
    upcasts them).
    """

    def __init__(self, width: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.ada_lin = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, vocab_size)

    def forward(self, x_BLC: torch.Tensor, cond_BC: torch.Tensor,
                autocast_logits: bool = False) -> torch.Tensor:
        x_BLC, cond_BC = x_BLC.float(), cond_BC.float()
        device_type = x_BLC.device.type
        autocast_logits = autocast_logits and torch.is_autocast_enabled(device_type)
        with torch.autocast(device_type=device_type, enabled=False):
            ada = F.linear(F.silu(cond_BC), self.ada_lin.weight.float(), self.ada_lin.bias.float())
            scale, shift = ada.view(-1, 1, 2, x_BLC.shape[-1]).unbind(2)
            h = F.layer_norm(x_BLC, x_BLC.shape[-1:], eps=self.eps).mul(scale + 1).add(shift)
            if not autocast_logits:
                return F.linear(h, self.out.weight.float(), self.out.bias.float())  # (B, L, V)
        return self.out(h)  # (B, L, V) in the autocast dtype


class HMARTransformer(nn.Module):
    """HMAR: shared base blocks, then a next-scale branch or a masked-prediction branch.

    With ``cfg.kind == "var"`` all blocks are base blocks, there is no mask branch, attention is
    block-causal in teacher forcing, and inference uses a :class:`KVCache`.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width, n_branch = cfg.width, cfg.n_layers_train
        n_base = cfg.depth - n_branch
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.class_embed = nn.Embedding(cfg.num_classes + 1, width)
        self.pos_start = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.seq_len, width))
        self.level_embed = nn.Embedding(cfg.num_scales, width)
        self.word_embed = nn.Linear(cfg.latent_channels, width, bias=False)
        self.word_embed_bias = nn.Parameter(torch.zeros(width))
        self.base_blocks = nn.ModuleList(AdaLNBlock(cfg, rates[i]) for i in range(n_base))
        self.ns_blocks = nn.ModuleList(
            AdaLNBlock(cfg, rates[n_base + i]) for i in range(n_branch)
        )
        self.ns_head = AdaLNHead(width, cfg.vocab_size, cfg.norm_eps)
        if cfg.has_mask_branch:
            self.mask_blocks = nn.ModuleList(
                AdaLNBlock(cfg, rates[n_base + i]) for i in range(n_branch)
            )
            self.mask_head = AdaLNHead(width, cfg.vocab_size, cfg.norm_eps)
            self.mask_embed = nn.Parameter(torch.zeros(1, width))
        self.scale_mask = ScaleMask(cfg.patch_nums, cfg.attention_pattern)
        self._scale_ids: dict[torch.device, torch.Tensor] = {}  # a cache, not state

    # ----------------------------------------------------------------------------- helpers
    def _branch(self, branch: Branch) -> tuple[nn.ModuleList, AdaLNHead]:
        if branch == "ns":
            return self.ns_blocks, self.ns_head
        if branch == "mask":
            if not self.cfg.has_mask_branch:
                raise ValueError("this model has no mask branch (VAR); use mask-free schedules")
            return self.mask_blocks, self.mask_head
        raise ValueError(f"branch must be 'ns' or 'mask', got {branch!r}")

    def check_labels(self, labels: torch.Tensor, sync: bool = True) -> None:
        """Raise a ``ValueError`` unless labels are int64 (B,) in [0, num_classes].

        With ``sync=False`` the range is checked by an asynchronous device assertion instead
        (no host synchronisation; a ``RuntimeError`` on CPU, a device-side assert on CUDA).
        """
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(f"labels must be int64 (B,), got {labels.dtype} {tuple(labels.shape)}")
        message = (f"class ids must be in [0, {self.cfg.num_classes}] "
                   f"({self.cfg.num_classes} = unconditional)")
        if not sync:
            torch._assert_async(((labels >= 0) & (labels <= self.cfg.num_classes)).all(), message)
            return
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.cfg.num_classes):
            raise ValueError(message)

    def scale_ids_on(self, device: torch.device) -> torch.Tensor:
        """:func:`~hmar_core.pyramid.scale_ids` (L,), built once per device (building it on a
        GPU synchronises with the host)."""
        ids = self._scale_ids.get(device)
        if ids is None:
            ids = self._scale_ids[device] = scale_ids(self.cfg.patch_nums, device)
        return ids

    def compile_blocks(self, **compile_kwargs: Any) -> None:
        """``torch.compile`` the parts of every block around its attention (training passes).

        The attention itself (our Triton ``autograd.Function`` or SDPA) stays outside the
        compiled graphs. Evaluation and inference keep running the plain code.

        Args:
            compile_kwargs: passed to ``torch.compile`` (e.g. ``mode``).
        """
        parts = BlockParts.compiled(**compile_kwargs)
        for block in self.modules():
            if isinstance(block, AdaLNBlock):
                block.compiled_parts = parts

    def _word(
        self, x_ns: torch.Tensor, x_mask: torch.Tensor | None, masked: torch.Tensor | None
    ) -> torch.Tensor:
        """W·x_ns (+ mask_embed or W·x_mask) + bias, (B, n, C)."""
        tokens = self.word_embed(x_ns)
        if x_mask is not None:
            second = self.word_embed(x_mask)
            if masked is not None:
                second = torch.where(masked[..., None], self.mask_embed.to(second.dtype), second)
            tokens = tokens + second
        return tokens + self.word_embed_bias

    def _run(
        self,
        x_BLC: torch.Tensor,
        cond_BC: torch.Tensor,
        branch: Branch,
        mask: ScaleMask | None,
        cache: KVCache | None,
        autocast_logits: bool = False,
    ) -> torch.Tensor:
        blocks, head = self._branch(branch)
        n_base = len(self.base_blocks)
        for i, block in enumerate(self.base_blocks):
            x_BLC = block(x_BLC, cond_BC, mask, cache, i)
        for i, block in enumerate(blocks):
            x_BLC = block(x_BLC, cond_BC, mask, cache, n_base + i)
        return head(x_BLC, cond_BC, autocast_logits)

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        labels: torch.Tensor,
        x_ns: torch.Tensor,
        x_mask: torch.Tensor | None = None,
        masked: torch.Tensor | None = None,
        *,
        autocast_logits: bool = False,
        sync_label_check: bool = True,
    ) -> torch.Tensor:
        """Teacher-forced logits over the whole pyramid.

        Args:
            labels: (B,) int64 class ids; ``num_classes`` is the null class. Label dropout is
                the trainer's job (this function never drops labels).
            x_ns: (B, L - 1, Cvae) next-scale input of scales 1..S-1.
            x_mask: (B, L - 1, Cvae) the mask branch's second input, or ``None`` for the
                next-scale branch.
            masked: (B, L - 1) bool, True where the mask branch sees [MASK]; needs ``x_mask``.
            autocast_logits: run the head's vocabulary projection under the ambient autocast
                (a training speed option; the logits then come in the autocast dtype).
            sync_label_check: check the label range on the host (a synchronisation); ``False``
                checks it with an asynchronous device assertion (training speed option).

        Returns:
            (B, L, V) logits, float32 unless ``autocast_logits``; position 0 (the class token)
            predicts scale 0.
        """
        cfg = self.cfg
        self.check_labels(labels, sync_label_check)
        batch = labels.shape[0]
        if x_ns.shape != (batch, cfg.seq_len - 1, cfg.latent_channels):
            raise ValueError(f"x_ns must be ({batch}, {cfg.seq_len - 1}, {cfg.latent_channels}), "
                             f"got {tuple(x_ns.shape)}")
        if (masked is None) != (x_mask is None):
            raise ValueError("x_mask and masked go together (both None for the ns branch)")
        if x_mask is not None and x_mask.shape != x_ns.shape:
            raise ValueError(f"x_mask shape {tuple(x_mask.shape)} != x_ns {tuple(x_ns.shape)}")
        if masked is not None and masked.shape != x_ns.shape[:2]:
            raise ValueError(f"masked must be {tuple(x_ns.shape[:2])}, got {tuple(masked.shape)}")
        cond_BC = self.class_embed(labels)
        first = (cond_BC[:, None] + self.pos_start).to(x_ns.dtype)  # (B, 1, C)
        x_BLC = torch.cat([first, self._word(x_ns, x_mask, masked)], dim=1)  # (B, L, C)
        ids = self.scale_ids_on(x_BLC.device)
        x_BLC = x_BLC + self.level_embed(ids)[None] + self.pos_embed
        branch: Branch = "ns" if x_mask is None else "mask"
        return self._run(x_BLC, cond_BC, branch, self.scale_mask, None, autocast_logits)

    def forward_scale(
        self,
        labels: torch.Tensor,
        scale: int,
        x_ns: torch.Tensor | None,
        *,
        x_mask: torch.Tensor | None = None,
        masked: torch.Tensor | None = None,
        branch: Branch = "ns",
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits of one scale, run as its own sequence (inference).

        Args:
            labels: (B,) int64 class ids (both CFG halves stacked by the caller).
            scale: scale index si.
            x_ns: (B, n, Cvae) next-scale input, ``None`` for scale 0 (the class token).
            x_mask, masked: (B, n, Cvae) and (B, n) bool for the mask branch.
            branch: ``"ns"`` or ``"mask"``.
            cache: a :class:`KVCache` for VAR models (required there), ``None`` for HMAR.

        Returns:
            (B, n, V) float32 logits.
        """
        cfg = self.cfg
        if not 0 <= scale < cfg.num_scales:
            raise ValueError(f"scale must be in [0, {cfg.num_scales}), got {scale}")
        if cfg.kind == "var" and cache is None:
            raise ValueError("VAR models need a KVCache at inference")
        self.check_labels(labels)
        cond_BC = self.class_embed(labels)
        pos = scale_slices(cfg.patch_nums)[scale]
        if scale == 0:
            x_BnC = cond_BC[:, None] + self.pos_start
        else:
            if x_ns is None:
                raise ValueError(f"scale {scale} needs its next-scale input x_ns")
            x_BnC = self._word(x_ns, x_mask, masked)
        x_BnC = x_BnC + self.level_embed.weight[scale] + self.pos_embed[:, pos]
        return self._run(x_BnC, cond_BC, branch, None, cache)
