"""The reference engine: the modules as written, in their own dtype (float32 by default).

It is the oracle of the tests (the fast engine in float32 must return its tokens) and the
engine for anything the fast path does not cover. It holds no weights of its own: it reads the
tokenizer and transformer it was given at every call.
"""

from __future__ import annotations

from typing import Any

import torch

from .engine import Engine, EngineName
from .model import ScaleRunner
from .sampler import ScaleModel
from .tokenizer import MultiScaleVQTokenizer
from .transformer import HMARTransformer

__all__ = ["ReferenceEngine"]


class ReferenceEngine(Engine):
    """The :class:`~hmar_core.engine.Engine` over the float32 modules."""

    name: EngineName = "reference"

    def __init__(self, tokenizer: MultiScaleVQTokenizer, transformer: HMARTransformer) -> None:
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.stateful = transformer.cfg.kind == "var"
        self.quantizer = tokenizer.quantize
        self.patch_nums = transformer.cfg.patch_nums
        self.null_class = transformer.cfg.null_class

    def __repr__(self) -> str:
        return f"ReferenceEngine({self.device}, {self.transformer.pos_start.dtype})"

    @property
    def device(self) -> torch.device:
        return self.transformer.pos_start.device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        dtype = self.tokenizer.quantize.codebook.dtype
        return self.tokenizer.encode(images.to(dtype))

    @torch.no_grad()
    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode_fhat(f_hat).float()

    def scale_model(self, labels: torch.Tensor) -> tuple[ScaleModel, dict[str, Any]]:
        del labels  # the reference network needs no per-run preparation
        return ScaleRunner(self.transformer), {}
