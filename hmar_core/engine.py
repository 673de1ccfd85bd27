"""The engine protocol: the work a model does for every entry point, whatever its precision.

Shape legend: B = batch, S = image side, C = latent channels, h×w = the latent grid.

Every public method of :class:`~hmar_core.pipeline.Pipeline` (generation, inpainting,
outpainting, class edits, edit sessions, previews, the heatmap) and everything built on it
(the CLI, the app) asks an :class:`Engine` for exactly three things: encode images to a token
pyramid, decode a latent to images, and sample a token pyramid under an optional constraint
with per-scale callbacks and resume. Two engines implement it:

* ``"reference"`` (:class:`~hmar_core.reference_engine.ReferenceEngine`): the float32 modules
  as written, the oracle of the tests;
* ``"fast"`` (:class:`~hmar_core.fast.engine.FastEngine`): half-precision blocks with a float32
  residual stream, fused kernels and CUDA graphs on CUDA, the sync-free sampling loop. In
  float32 (``dtype=torch.float32``) it returns the reference's tokens for the same seed.

:class:`EditModel` is what the editing package needs of a pipeline (the engine plus its
sampling defaults), so that editing is typed against protocols and never imports the pipeline.
:func:`resolve_engine` turns the user's ``"auto" | "fast" | "reference"`` into an engine name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import torch

from .config import SamplerConfig
from .sampler import (
    Quantizer,
    SampleOutput,
    ScaleConstraint,
    ScaleModel,
    ScaleState,
    sample,
)
from .schedules import Schedule

__all__ = ["ENGINE_CHOICES", "EditModel", "Engine", "EngineName", "engine_with_fp8",
           "resolve_engine"]

EngineName = Literal["fast", "reference"]
#: What users may pass as ``engine=`` (and ``--engine``).
ENGINE_CHOICES: tuple[str, ...] = ("auto", "fast", "reference")


class Engine(ABC):
    """The work behind every entry point (see the module docstring).

    An engine encodes and decodes (abstract) and samples with :func:`~hmar_core.sampler.sample`
    over the scale model its :meth:`scale_model` gives for a run (the one sampling method both
    engines share).

    Attributes:
        name: ``"fast"`` or ``"reference"``.
        stateful: the network keeps per-run state between scales (VAR's KV cache); such
            runs cannot resume from a :class:`~hmar_core.sampler.ScaleState`.
        quantizer: the tokenizer's codebook and phi convolutions (the pyramid math).
        patch_nums, null_class: the pyramid and the unconditional class id.
    """

    name: EngineName
    stateful: bool
    quantizer: Quantizer
    patch_nums: tuple[int, ...]
    null_class: int

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @abstractmethod
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, S, S) in [-1, 1] (float32) → token pyramid, list of (B, pn²) int64."""

    @abstractmethod
    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent (B, C, h, w) float32 → images (B, 3, S, S) float32 in [-1, 1]."""

    @abstractmethod
    def scale_model(self, labels: torch.Tensor) -> tuple[ScaleModel, dict[str, Any]]:
        """The network callable for one run on (B,) ``labels`` and the extra keyword arguments
        of :func:`~hmar_core.sampler.sample` (``drawer``, ``upsample``, ``region``) this
        engine uses."""

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
        """Sample a pyramid for (B,) ``labels`` (see :func:`hmar_core.sampler.sample`)."""
        model_fn, options = self.scale_model(labels)
        return sample(model_fn, self.quantizer, self.patch_nums, settings, schedule,
                      labels=labels, null_class=self.null_class, generator=generator,
                      constraint=constraint, on_scale=on_scale, resume=resume,
                      record_steps=record_steps, **options)


class EditModel(Protocol):
    """What editing needs of a pipeline: its engine, its pyramid and its sampling defaults.

    :class:`~hmar_core.pipeline.Pipeline` implements it.
    """

    backend: Engine
    sampler_config: SamplerConfig

    @property
    def engine(self) -> str: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def patch_nums(self) -> tuple[int, ...]: ...

    @property
    def image_size(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def null_class(self) -> int: ...

    @property
    def has_mask_branch(self) -> bool: ...

    def resolve_schedule(
        self, mask_schedule: Sequence[Sequence[int]] | None = None, steps: int | None = None
    ) -> Schedule: ...

    def sampler_settings(self, **overrides: object) -> SamplerConfig: ...

    def make_generator(self, seed: int | None) -> tuple[torch.Generator, int]: ...

    def model_key(self) -> tuple[object, ...]:
        """Identifies the weights, device and engine (cache keys of edit sessions)."""
        ...


def resolve_engine(engine: str, device: torch.device | str) -> EngineName:
    """``"auto"`` → the faster engine for ``device``; ``"fast"`` / ``"reference"`` as given.

    ``auto`` is the fast engine everywhere: on CUDA it is several times faster, and on CPU
    (float32, no graphs or Triton) it was measured faster too on the bundled model
    (``python -m benchmarks.inference --cpu``, BENCHMARKS.md), with the same tokens.

    Raises:
        ValueError: an unknown name.
    """
    if not isinstance(engine, str) or engine not in ENGINE_CHOICES:
        raise ValueError(f"engine must be one of {', '.join(ENGINE_CHOICES)}; got {engine!r}")
    del device  # both device kinds resolve alike today; kept for the signature's meaning
    return "fast" if engine == "auto" else engine  # type: ignore[return-value]


def engine_with_fp8(engine: str, fp8: bool) -> tuple[str, dict[str, Any]]:
    """The engine name and engine options of an ``--engine`` / ``--fp8`` pair of flags (the
    CLI's and the app's): FP8 GEMMs run on the fast engine, so ``fp8`` turns ``auto`` into
    ``fast``; without it, the name as given and no options.

    Raises:
        ValueError: ``fp8`` with the reference engine.
    """
    if not fp8:
        return engine, {}
    if engine == "reference":
        raise ValueError("--fp8 runs on the fast engine; it cannot be combined with "
                         "--engine reference")
    return "fast", {"fp8": True}
