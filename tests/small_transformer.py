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


def assert_runners_agree(model: HMARTransformer, plain: object, fast: object,
                         dtype: torch.dtype) -> None:
    """Two :class:`~hmar_core.fast.FastRunner` s over ``model`` give the same teacher-forced
    logits (both branches for HMAR) and, for HMAR, the same CFG pass (both halves in one batch,
    combined): within 1e-5 relative in float32 (1e-3 in half precision), the same argmax for
    at least 99 % of the tokens."""
    from hmar_core.sampler import ScaleInput

    cfg = model.cfg
    device = model.pos_start.device
    hmar = cfg.kind == "hmar"
    gen = torch.Generator().manual_seed(1)
    x_ns = torch.randn(2, cfg.seq_len - 1, cfg.latent_channels, generator=gen).to(device)
    x_mask = torch.randn(x_ns.shape, generator=gen).to(device) if hmar else None
    masked = (torch.rand(x_ns.shape[:2], generator=gen) < 0.4).to(device) if hmar else None
    labels = torch.tensor([3, 10], device=device)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-3
    with torch.no_grad():
        want = plain.teacher_forced(labels, x_ns, x_mask, masked)
        got = fast.teacher_forced(labels, x_ns, x_mask, masked)
        rel = float((got - want).norm() / want.norm())
        assert got.dtype == torch.float32 and rel < tolerance, rel
        assert float((got.argmax(-1) == want.argmax(-1)).float().mean()) >= 0.99
        if hmar:  # the CFG pass of the 5×5 scale
            part = slice(cfg.seq_len - 1 - 25, None)
            args = (labels[:1], 10, 2.5, ScaleInput(3, x_ns[:1, part]))
            guided_want, guided_got = plain.guided(*args), fast.guided(*args)
            rel = float((guided_got - guided_want).norm() / guided_want.norm())
            assert rel < tolerance, rel
