"""A small random transformer for the fast-path kernel and runner tests: 3 blocks, 4 scales,
every weight drawn from N(0, std²) (the official init zeroes AdaLN, which would hide the
modulation from the comparisons)."""

from __future__ import annotations

import torch

from hmar_core import TransformerConfig
from hmar_core.transformer import HMARTransformer


def small_transformer(kind: str = "hmar", *, width: int = 48, heads: int = 3,
                      std: float = 0.02, device: torch.device | str = "cpu") -> HMARTransformer:
    """An eval-mode ``kind`` transformer (seed 0) on ``device``."""
    cfg = TransformerConfig(depth=3, width=width, heads=heads, n_layers_train=1, kind=kind,
                            num_classes=10, patch_nums=(1, 2, 3, 5))
    model = HMARTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, std, generator=gen)
    return model.to(device)
