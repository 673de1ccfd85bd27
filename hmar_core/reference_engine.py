"""The reference engine: the modules as written, in their own dtype (float32 by default).

It is the oracle of the tests (the fast engine in float32 must return its tokens) and the
engine for anything the fast path does not cover. It holds no weights of its own: it reads the
tokenizer and transformer it was given at every call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import SamplerConfig
from .engine import EngineName
from .model import ScaleRunner
from .sampler import SampleOutput, ScaleConstraint, ScaleState, sample
from .schedules import Schedule
from .tokenizer import MultiScaleVQTokenizer
from .transformer import HMARTransformer

__all__ = ["ReferenceEngine"]


class ReferenceEngine:
    """The :class:`~hmar_core.engine.Engine` over the float32 modules."""

    name: EngineName = "reference"

    def __init__(self, tokenizer: MultiScaleVQTokenizer, transformer: HMARTransformer) -> None:
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.stateful = transformer.cfg.kind == "var"

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

    @torch.no_grad()
    def sample_tokens(
        self,
        labels: torch.Tensor,
        settings: SamplerConfig,
        schedule: Schedule,
        generator: torch.Generator,
        *,
        constraint: ScaleConstraint | None = None,
        on_scale: Callable[[ScaleState], None] | None = None,
        resume: ScaleState | None = None,
        record_steps: bool = False,
    ) -> SampleOutput:
        return sample(
            ScaleRunner(self.transformer), self.tokenizer.quantize,
            self.transformer.cfg.patch_nums, settings, schedule, labels=labels,
            null_class=self.transformer.cfg.null_class, generator=generator,
            constraint=constraint, on_scale=on_scale, resume=resume, record_steps=record_steps,
        )
