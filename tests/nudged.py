"""A random pipeline whose class matters: official init zeroes AdaLN, so a random model ignores
its class and context until its weights are nudged (shared by the editing tests)."""

from __future__ import annotations

import torch

from hmar_core import Pipeline


def nudged(pipe: Pipeline, scale: float = 0.05) -> Pipeline:
    """``pipe`` with every transformer weight moved by ``scale`` · N(0, 1) (seed 0), in place."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in pipe.transformer.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return pipe
