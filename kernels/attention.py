"""One attention entry point for the whole project.

Shape legend: B = batch, H = heads, L = tokens, D = head dimension.

``attention(q, k, v, mask, *, scale=None, backend="auto")`` computes
``softmax(q·kᵀ·scale + mask)·v`` for q, k, v of shape (B, H, L, D). ``mask`` is a
:class:`~kernels.mask.ScaleMask` (built once per pyramid and pattern) or ``None`` for full
attention (one scale at a time at inference).

Backends:

* ``"reference"``: dense PyTorch SDPA with a boolean mask; any device and dtype.
* ``"flex"``: FlexAttention with a block mask built from the scale ids (CUDA).
* ``"triton"``: our block-sparse Triton kernel (CUDA, fp16/bf16; head dim 64 or 128;
  contiguous inputs).

``"auto"`` picks ``"triton"`` for fp16/bf16 CUDA tensors with a mask and head dim 64 or 128
(made contiguous if they are not) and ``"reference"`` otherwise. A backend that was asked for
by name but cannot run raises a ``ValueError`` or ``RuntimeError`` that says why; nothing falls
back silently. The backend chosen for each (device, dtype, pattern) is logged once per process
by the caller-visible logger.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import torch
import torch.nn.functional as F

from .mask import ScaleMask
from .validation import check_attention_inputs

__all__ = ["Backend", "attention", "available_backends"]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "reference", "flex", "triton"]
_BACKENDS = ("auto", "reference", "flex", "triton")


def _validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: ScaleMask | None) -> None:
    check_attention_inputs(q, k, v, mask)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: ScaleMask | None, scale: float
) -> torch.Tensor:
    """Dense PyTorch attention with a boolean mask. Returns (B, H, L, D) in q's dtype."""
    attn_mask = None if mask is None else mask.dense(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


def _triton_ready() -> bool:
    """The Triton backend's module imports and it reports itself available."""
    try:
        from . import triton_backend
    except ImportError:
        return False
    return triton_backend.is_available()


def available_backends(device: torch.device | str, dtype: torch.dtype) -> list[str]:
    """The backends that can run on this device and dtype, without compiling anything.

    ``"flex"`` and ``"triton"`` are listed for CUDA devices only (FlexAttention has no CPU
    backward; the Triton interpreter is for tests), ``"triton"`` for fp16 and bf16 only.
    """
    device = torch.device(device)
    found = ["reference"]
    if device.type == "cuda":
        from . import flex_backend

        if flex_backend.is_available():
            found.append("flex")
        if dtype in (torch.float16, torch.bfloat16) and _triton_ready():
            found.append("triton")
    return found


def _auto_backend(q: torch.Tensor, mask: ScaleMask | None) -> str:
    """``"triton"`` for masked fp16/bf16 CUDA inputs of a head dim it supports, else reference."""
    if mask is None or not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return "reference"
    if q.shape[-1] not in (64, 128):
        return "reference"
    return "triton" if _triton_ready() else "reference"


@functools.cache
def _log_once(backend: str, device_type: str, dtype: str, pattern: str) -> None:
    logger.info("attention backend %s for %s %s %s", backend, device_type, dtype, pattern)


def _log_choice(backend: str, q: torch.Tensor, mask: ScaleMask | None) -> None:
    _log_once(backend, q.device.type, str(q.dtype), mask.pattern if mask is not None else "full")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: ScaleMask | None,
    *,
    scale: float | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Scaled dot-product attention over a token pyramid.

    Args:
        q, k, v: (B, H, L, D) tensors of one dtype on one device.
        mask: the pyramid's :class:`ScaleMask`, or ``None`` for unmasked attention.
        scale: softmax scale; default ``1/sqrt(D)``.
        backend: ``"auto"``, ``"reference"``, ``"flex"`` or ``"triton"``.

    Returns:
        (B, H, L, D) tensor in q's dtype.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    _validate(q, k, v, mask)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    chosen_automatically = backend == "auto"
    if chosen_automatically:
        backend = _auto_backend(q, mask)
    _log_choice(backend, q, mask)
    if backend == "reference":
        return reference_attention(q, k, v, mask, scale)
    if backend == "flex":
        from . import flex_backend

        if mask is None:
            raise ValueError("backend 'flex' needs a ScaleMask; use 'reference' for mask=None")
        return flex_backend.flex_attention(q, k, v, mask, scale)
    from . import triton_backend

    if mask is None:
        raise ValueError("backend 'triton' needs a ScaleMask; use 'reference' for mask=None")
    if chosen_automatically:  # the kernel takes contiguous (B, H, L, D); a named call must
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    triton_backend.check_triton_inputs(q, k, v, scale)  # the shared checks ran above
    return triton_backend.run_checked(q, k, v, mask, scale)
