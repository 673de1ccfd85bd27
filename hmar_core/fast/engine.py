"""FastPipeline: generation and editing through the fast path, same API as the Pipeline.

:class:`FastPipeline` wraps a :class:`~hmar_core.pipeline.Pipeline` (reached with
``pipe.to_fast()``): the transformer runs through a :class:`~hmar_core.fast.runner.FastRunner`,
the sampling loop is :func:`~hmar_core.fast.sampling.fast_sample`, and the VQ-VAE convolution
stacks run in ``vae_dtype`` (bf16 on accelerators) while the quantiser (codebook, phi convs,
f_hat) stays float32. Settings, schedules, labels and seeds come from the wrapped pipeline, so
``fast.generate(...)`` takes the arguments of ``Pipeline.generate`` and, in float32, returns the
same tokens for the same seed.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .. import pyramid
from ..config import SamplerConfig
from ..sampler import SampleOutput, ScaleConstraint, ScaleState
from ..schedules import Schedule
from ..transformer import HMARTransformer
from .runner import FastRunner
from .sampling import fast_sample

if TYPE_CHECKING:
    from ..pipeline import ClassIds, GenerateOutput, Pipeline

__all__ = ["CompiledOrEager", "FastPipeline", "cast_blocks_"]

logger = logging.getLogger(__name__)


def cast_blocks_(transformer: HMARTransformer, dtype: torch.dtype) -> HMARTransformer:
    """Cast the transformer blocks to ``dtype`` in place (embeddings and heads stay as they are).

    For inference-only use with a :class:`FastRunner` of the same ``dtype``, which then shares
    these weights instead of copying them (bf16 d30: 5 GB instead of 10 + 5). The reference
    float32 path can no longer run on this transformer afterwards.
    """
    for name in ("base_blocks", "ns_blocks", "mask_blocks"):
        blocks = getattr(transformer, name, None)
        if blocks is not None:
            blocks.to(dtype)
    return transformer


class CompiledOrEager:
    """``torch.compile(module)`` that falls back to the eager module for good if compiling or
    running the compiled code raises (a missing compiler, an unsupported op)."""

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module, self.name = module, name
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = torch.compile(
            module, dynamic=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as err:  # noqa: BLE001 - any compiler failure: run eagerly
                logger.warning("compiled %s failed (%s: %s); using the eager module",
                               self.name, type(err).__name__, err)
                self.compiled = None
        return self.module(x)


class FastPipeline:
    """The fast inference engine over a pipeline's weights.

    Args:
        pipe: the :class:`~hmar_core.pipeline.Pipeline` (eval mode).
        dtype: transformer block dtype (default fp16 on accelerators, float32 on CPU).
        residual_dtype: dtype of the residual stream between blocks (float32 by default, as
            under autocast: it keeps half-precision logits within ~0.2 % of float32).
        cuda_graphs: one CUDA graph per (scale, branch, batch) on CUDA devices.
        vae_dtype: dtype of the encoder/decoder convolutions (default bf16 on accelerators:
            unlike the blocks, conv activations are not normalised before every product, so
            the wider exponent range is kept; float32 on CPU).
        decode_batch: images decoded per chunk (bounds the decoder's activation memory).
        vae_channels_last: run the decoder's convolutions in channels-last layout (the native
            layout of bf16 tensor-core convolutions; measure before turning it on).
        compile_vae: ``torch.compile`` the encoder and decoder (fuses GroupNorm + SiLU and
            the layout conversions around the convolutions). Default: on CUDA only. The
            first call per image batch size compiles (tens of seconds); a compile failure
            logs a warning and falls back to the eager modules.
        fused: the runner's fused Triton residual/LayerNorm/modulation and q/k-norm kernels
            (``None``: on CUDA when Triton works, see :class:`FastRunner`).
    """

    def __init__(
        self,
        pipe: Pipeline,
        *,
        dtype: torch.dtype | None = None,
        residual_dtype: torch.dtype | None = torch.float32,
        cuda_graphs: bool = True,
        vae_dtype: torch.dtype | None = None,
        decode_batch: int = 16,
        vae_channels_last: bool = False,
        compile_vae: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if decode_batch < 1:
            raise ValueError(f"decode_batch must be >= 1, got {decode_batch}")
        self.pipe = pipe
        self.runner = FastRunner(pipe.transformer, dtype, cuda_graphs, residual_dtype, fused)
        accelerator = self.runner.device.type != "cpu"
        self.vae_dtype = vae_dtype if vae_dtype is not None else (
            torch.bfloat16 if accelerator else self.runner.dtype)
        self.decode_batch = decode_batch
        self.vae_channels_last = vae_channels_last
        compile_vae = self.runner.device.type == "cuda" if compile_vae is None else compile_vae
        self._upsample = pyramid.MatrixBicubicUp()  # the sampler's bicubic, as matmuls
        tokenizer = pipe.tokenizer
        decoder = self._in_vae_dtype(nn.Sequential(tokenizer.post_quant_conv, tokenizer.decoder),
                                     vae_channels_last)
        encoder = self._in_vae_dtype(nn.Sequential(tokenizer.encoder, tokenizer.quant_conv))
        self._decoder: Callable[[torch.Tensor], torch.Tensor] = (
            CompiledOrEager(decoder, "decoder") if compile_vae else decoder)
        self._encoder: Callable[[torch.Tensor], torch.Tensor] = (
            CompiledOrEager(encoder, "encoder") if compile_vae else encoder)

    def _in_vae_dtype(self, module: nn.Module, channels_last: bool = False) -> nn.Module:
        """``module`` itself when it already fits, else a converted copy (never modified)."""
        weight = next(module.parameters())
        if weight.dtype == self.vae_dtype and not channels_last:
            return module
        module = copy.deepcopy(module).to(self.vae_dtype).eval()
        return module.to(memory_format=torch.channels_last) if channels_last else module

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.pipe.patch_nums

    # ----------------------------------------------------------------------------- images
    @torch.no_grad()
    def decode_fhat(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, Cvae, h, w) float32 → images (B, 3, H, W) float32 in [-1, 1], chunked."""
        layout = torch.channels_last if self.vae_channels_last else torch.contiguous_format
        images = [self._decoder(chunk.to(self.vae_dtype).contiguous(memory_format=layout))
                  .float().clamp_(-1, 1) for chunk in f_hat.split(self.decode_batch)]
        return torch.cat(images).contiguous()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] → token pyramid (quantised in float32)."""
        self.pipe.tokenizer.check_images(images)
        latent = self._encoder(images.to(self.vae_dtype)).float()
        quantize = self.pipe.tokenizer.quantize
        tokens, _ = pyramid.quantize_residual(latent, quantize.codebook, quantize.phis(),
                                              self.patch_nums)
        return tokens

    # ---------------------------------------------------------------------------- sampling
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
        """``Pipeline.sample_tokens`` through the fast runner and the sync-free loop."""
        null_class = self.pipe.transformer.cfg.null_class
        self.runner.begin(labels, null_class)
        return fast_sample(
            self.runner, self.pipe.tokenizer.quantize, self.patch_nums, settings, schedule,
            labels=labels, null_class=null_class, generator=generator, constraint=constraint,
            on_scale=on_scale, resume=resume, record_steps=record_steps,
            upsample=self._upsample,
        )

    @torch.no_grad()
    def generate(
        self,
        class_ids: ClassIds = None,
        *,
        seed: int | None = None,
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        mask_schedule: Sequence[Sequence[int]] | None = None,
        steps: int | None = None,
        batch_size: int | None = None,
        on_scale: Callable[[ScaleState], None] | None = None,
    ) -> GenerateOutput:
        """Same arguments and result as :meth:`Pipeline.generate <hmar_core.pipeline.
        Pipeline.generate>`."""
        from ..pipeline import GenerateOutput

        pipe = self.pipe
        settings = pipe.sampler_settings(cfg=cfg, top_k=top_k, top_p=top_p)
        schedule = pipe.resolve_schedule(mask_schedule, steps)
        generator, seed = pipe.make_generator(seed)
        labels = pipe.labels_for(class_ids, batch_size, generator)
        out = self.sample_tokens(labels, settings, schedule, generator, on_scale=on_scale)
        images = (self.decode_fhat(out.f_hat) + 1) / 2
        last = self.patch_nums[-1]
        confidence = out.confidence[-1].view(-1, last, last)
        return GenerateOutput(images, out.tokens, out.labels, confidence, seed)
