"""Input checks shared by :func:`kernels.attention` and every backend (``ValueError`` only)."""

from __future__ import annotations

import math

import torch

from .mask import ScaleMask

__all__ = ["check_attention_inputs"]


def check_attention_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: ScaleMask | None,
    scale: float | None = None,
    *,
    require_mask: bool = False,
) -> None:
    """Raise a ``ValueError`` unless q, k, v are (B, H, L, D) tensors of one shape, dtype and
    device whose L matches ``mask`` (and ``scale``, when given, is finite)."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, L, D), got {tuple(tensor.shape)}")
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must have the same shape, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if mask is None and require_mask:
        raise ValueError("this backend needs a kernels.ScaleMask")
    if mask is not None:
        if not isinstance(mask, ScaleMask):
            raise ValueError(f"mask must be a kernels.ScaleMask or None, got "
                             f"{type(mask).__name__}")
        if q.shape[2] != mask.length:
            raise ValueError(f"sequence length {q.shape[2]} does not match the mask's pyramid "
                             f"{mask.patch_nums} (L = {mask.length})")
    if scale is not None and (not isinstance(scale, (int, float)) or not math.isfinite(scale)):
        raise ValueError(f"scale must be a finite float, got {scale!r}")
