"""FlexAttention backend: a block mask built from the scale ids, compiled once per mask.

Shape legend: B = batch, H = heads, L = tokens, D = head dimension.

The ``mask_mod`` compares the scale ids of the query and the key (attention-gym's document
mask pattern): equal ids for ``"block_diagonal"``, a query id at least the key id for
``"block_causal"``. Both patterns share one ``mask_mod`` body, with the pattern as a 0-dim
tensor, so that switching patterns does not recompile. The :class:`BlockMask` is built once per
(mask, device) and the compiled ``flex_attention`` once per process, both cached here.

Limits: PyTorch's FlexAttention has no backward on CPU, so on CPU this backend is forward-only
(inputs that require grad raise). Compilation takes seconds per new shape.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch

from .mask import ScaleMask
from .validation import check_attention_inputs

__all__ = ["flex_attention", "is_available"]


def is_available() -> bool:
    """Whether ``torch.nn.attention.flex_attention`` can be imported."""
    try:
        return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
    except ModuleNotFoundError:
        return False


@functools.cache
def _compiled_flex() -> Callable[..., torch.Tensor]:
    """``torch.compile(flex_attention)``, made on first use."""
    from torch.nn.attention.flex_attention import flex_attention as flex

    return torch.compile(flex, dynamic=False)


@functools.lru_cache(maxsize=32)
def _block_mask(mask: ScaleMask, device: torch.device) -> object:
    """The :class:`BlockMask` of ``mask`` on ``device`` (the key includes L via the mask)."""
    from torch.nn.attention.flex_attention import create_block_mask

    scale_ids = mask.scale_ids(device)
    causal = torch.tensor(mask.pattern == "block_causal", device=device)

    def mask_mod(
        batch: torch.Tensor, head: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        q_scale, kv_scale = scale_ids[q_idx], scale_ids[kv_idx]
        return (q_scale == kv_scale) | (causal & (q_scale > kv_scale))

    length = mask.length
    return create_block_mask(mask_mod, None, None, length, length, device=device)


def _validate(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: ScaleMask, scale: float
) -> None:
    check_attention_inputs(q, k, v, mask, scale, require_mask=True)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if q.device.type == "cpu" and needs_grad:
        raise ValueError("FlexAttention has no backward on CPU; use backend='reference' there")


def flex_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: ScaleMask, scale: float
) -> torch.Tensor:
    """Compiled FlexAttention over a token pyramid.

    Args:
        q, k, v: (B, H, L, D) tensors of one dtype on one device.
        mask: the pyramid's :class:`ScaleMask`; ``mask.length`` must equal L.
        scale: softmax scale.

    Returns:
        (B, H, L, D) tensor in q's dtype.
    """
    if not is_available():
        raise RuntimeError("torch.nn.attention.flex_attention is not available in this torch")
    _validate(q, k, v, mask, scale)
    block_mask = _block_mask(mask, q.device)
    if not torch.is_grad_enabled():  # FlexAttention refuses CPU inputs that require grad
        q, k, v = q.detach(), k.detach(), v.detach()
    return _compiled_flex()(q, k, v, block_mask=block_mask, scale=float(scale))
