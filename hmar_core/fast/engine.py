"""FastEngine: the fast :class:`~hmar_core.engine.Engine` (half-precision blocks, fused
kernels, CUDA graphs, sync-free sampling).

A :class:`~hmar_core.pipeline.Pipeline` built with ``engine="fast"`` runs every method through
this engine: the transformer runs through a :class:`~hmar_core.fast.runner.FastRunner`, the
sampling loop is the shared one with the sync-free draw of :mod:`~hmar_core.fast.sampling`,
and the VQ-VAE convolution stacks run in ``vae_dtype`` (bf16 on accelerators) while the
quantiser (codebook, phi convs, f_hat) stays float32. In float32 it returns the reference
engine's tokens for the same seed (``tests/test_engines.py``).

Weights: with ``own_weights=True`` (what ``Pipeline.from_pretrained(..., engine="fast")`` and
``load_official(..., engine="fast")`` use) the engine casts the transformer blocks and the VAE
convolutions *in place*, so no float32 copy of them stays alive; the modules then serve this
engine only. Without it (``pipe.with_engine("fast")`` on an existing float32 pipeline) it
works on copies and leaves the modules untouched.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
import torch.nn as nn

from .. import pyramid
from ..engine import Engine, EngineName
from ..sampler import ScaleModel
from ..tokenizer import MultiScaleVQTokenizer
from ..transformer import HMARTransformer
from .checked import may_run
from .graphs import GraphCache
from .runner import FastRunner, check_count, default_dtype
from .sampling import GUMBEL

__all__ = ["CompiledOrEager", "FastEngine", "cast_blocks_"]

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


class _DecoderFeatures(nn.Module):
    """``post_quant_conv`` and the decoder up to (not including) its last convolution."""

    def __init__(self, decoder: nn.Sequential) -> None:
        super().__init__()
        self.post_quant_conv, self.decoder = decoder[0], decoder[1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder.features(self.post_quant_conv(z))


def _rgb_conv(conv: nn.Conv2d, dtype: torch.dtype, requested: bool | None
              ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """:func:`hmar_core.fast.rgb_conv.rgb_conv_for`, imported only when it may run."""
    if not may_run(requested, conv.weight.device):
        return None
    if importlib.util.find_spec("triton") is None:
        if requested:
            raise ImportError("rgb_conv=True needs triton")
        return None
    from .rgb_conv import rgb_conv_for

    return rgb_conv_for(conv, dtype, requested)


class FastEngine(Engine):
    """The fast engine over a tokenizer and transformer (see the module docstring).

    Args:
        tokenizer, transformer: the (eval-mode) modules, already on their device.
        dtype: transformer block dtype (default fp16 on accelerators, float32 on CPU).
        residual_dtype: dtype of the residual stream between blocks (float32 by default, as
            under autocast: it keeps half-precision logits within ~0.2 % of float32).
        cuda_graphs: one CUDA graph per (scale, branch, batch) on CUDA devices.
        vae_dtype: dtype of the encoder/decoder convolutions (default bf16 on accelerators:
            unlike the blocks, conv activations are not normalised before every product, so
            the wider exponent range is kept; float32 on CPU).
        decode_batch: images decoded per chunk (bounds the decoder's activation memory).
        vae_channels_last: run the decoder's convolutions in channels-last layout.
        compile_vae: ``torch.compile`` the encoder and decoder (default: on CUDA only). The
            first call per image batch size compiles (tens of seconds); a compile failure
            logs a warning and falls back to the eager modules.
        fused: the runner's fused Triton kernels (``None``: on CUDA when Triton works).
        own_weights: cast the modules' blocks and VAE convolutions in place instead of
            copying them (no float32 copies stay alive; the modules serve this engine only).
        vae_graph_batch: on CUDA with ``cuda_graphs``, encodings and decode chunks of at most
            this many images run as one CUDA graph each (the encoder with the residual
            quantiser; the decoder): at the editor's batch sizes both are a few hundred small
            launches, each costing more host time than its GPU work. Larger batches keep the
            per-launch path (their graphs' memory pools would stay allocated). 0 turns it off.
        fp8: the blocks' four GEMMs in FP8 e4m3 with per-token and per-channel scales
            (:mod:`hmar_core.fast.fp8`; opt-in and lossy: Hopper/Ada GPUs, or CPU for tests).
            Raises ``RuntimeError`` where they cannot run.
        fp8_min_rows: with ``fp8``, passes over fewer token rows than this keep the
            half-precision GEMMs (see :class:`~hmar_core.fast.runner.FastRunner`).
        rgb_conv: the decoder's last convolution (to the colour channels) as one Triton
            kernel with the clamp and float32 output in its epilogue
            (:mod:`hmar_core.fast.rgb_conv`; ``None``: on CUDA when it works, checked once).
        attention_kernel: HMAR's q/k norm and attention of a pass as one Triton kernel
            (:mod:`hmar_core.fast.attention`; ``None``: on CUDA when it works, checked once).
    """

    name: EngineName = "fast"

    def __init__(
        self,
        tokenizer: MultiScaleVQTokenizer,
        transformer: HMARTransformer,
        *,
        dtype: torch.dtype | None = None,
        residual_dtype: torch.dtype | None = torch.float32,
        cuda_graphs: bool = True,
        vae_dtype: torch.dtype | None = None,
        decode_batch: int = 16,
        vae_channels_last: bool = False,
        compile_vae: bool | None = None,
        fused: bool | None = None,
        own_weights: bool = False,
        vae_graph_batch: int = 4,
        fp8: bool = False,
        fp8_min_rows: int = 2048,
        rgb_conv: bool | None = None,
        attention_kernel: bool | None = None,
    ) -> None:
        check_count("vae_graph_batch", vae_graph_batch, 0)
        check_count("decode_batch", decode_batch, 1)
        device = transformer.pos_start.device
        dtype = dtype if dtype is not None else default_dtype(device)
        if own_weights:
            cast_blocks_(transformer, dtype)
        self.tokenizer = tokenizer
        self.quantizer = tokenizer.quantize
        self.patch_nums = transformer.cfg.patch_nums
        self.null_class = transformer.cfg.null_class
        self.runner = FastRunner(transformer, dtype, cuda_graphs, residual_dtype, fused, fp8,
                                 fp8_min_rows, attention_kernel)
        self.stateful = self.runner.stateful
        accelerator = device.type != "cpu"
        self.vae_dtype = vae_dtype if vae_dtype is not None else (
            torch.bfloat16 if accelerator else self.runner.dtype)
        self.decode_batch = decode_batch
        self.vae_channels_last = vae_channels_last
        compile_vae = device.type == "cuda" if compile_vae is None else compile_vae
        # the VAE's graphs have their own pool: a failed capture there leaves the runner's on
        self.vae_graphs = GraphCache(enabled=cuda_graphs and vae_graph_batch > 0)
        self.vae_graph_batch = vae_graph_batch
        self._upsample = pyramid.MatrixBicubicUp()  # the sampler's bicubic, as matmuls
        decoder = self._in_vae_dtype(nn.Sequential(tokenizer.post_quant_conv, tokenizer.decoder),
                                     own_weights, vae_channels_last)
        # the last conv as a Triton kernel (cuDNN picks a slow direct kernel for 3 outputs)
        self._rgb_conv = _rgb_conv(decoder[1].conv_out, self.vae_dtype, rgb_conv)
        if self._rgb_conv is not None:
            decoder = _DecoderFeatures(decoder)
        encoder = self._in_vae_dtype(nn.Sequential(tokenizer.encoder, tokenizer.quant_conv),
                                     own_weights)
        self._decoder: Callable[[torch.Tensor], torch.Tensor] = (
            CompiledOrEager(decoder, "decoder") if compile_vae else decoder)
        self._encoder: Callable[[torch.Tensor], torch.Tensor] = (
            CompiledOrEager(encoder, "encoder") if compile_vae else encoder)

    def __repr__(self) -> str:
        fp8 = f", FP8 GEMMs into {self.runner.fp8_dtype}" if self.runner.fp8_dtype else ""
        return (f"FastEngine({self.device}, blocks {self.runner.dtype}{fp8}, vae "
                f"{self.vae_dtype}, fused {self.runner.fused})")

    def _in_vae_dtype(self, module: nn.Module, in_place: bool,
                      channels_last: bool = False) -> nn.Module:
        """``module`` in ``vae_dtype``: itself when it fits or ``in_place``, else a copy."""
        weight = next(module.parameters())
        if weight.dtype == self.vae_dtype and not channels_last:
            return module
        if not in_place:
            module = copy.deepcopy(module)
        module = module.to(self.vae_dtype).eval()
        return module.to(memory_format=torch.channels_last) if channels_last else module

    @property
    def device(self) -> torch.device:
        return self.runner.device

    # ----------------------------------------------------------------------------- images
    def _graphed(self, batch: int) -> bool:
        return (self.vae_graphs.enabled and self.device.type == "cuda"
                and batch <= self.vae_graph_batch)

    def _decode_chunk(self, f_hat: torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last if self.vae_channels_last else torch.contiguous_format
        out = self._decoder(f_hat.to(self.vae_dtype).contiguous(memory_format=layout))
        return self._rgb_conv(out) if self._rgb_conv is not None else out.float().clamp_(-1, 1)

    @torch.no_grad()
    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, Cvae, h, w) float32 → images (B, 3, H, W) float32 in [-1, 1], chunked."""
        images = []
        for chunk in f_hat.split(self.decode_batch):
            if self._graphed(chunk.shape[0]):  # the graph's output is reused by its next replay
                images.append(self.vae_graphs.run(("decode", tuple(chunk.shape)),
                                                  self._decode_chunk, (chunk,), self.device
                                                  ).clone())
            else:
                images.append(self._decode_chunk(chunk))
        return torch.cat(images).contiguous() if len(images) > 1 else images[0].contiguous()

    def _encode_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        latent = self._encoder(images.to(self.vae_dtype)).float()
        quantize = self.tokenizer.quantize
        tokens, _ = pyramid.quantize_residual(latent, quantize.codebook, quantize.phis(),
                                              self.patch_nums)
        return tuple(tokens)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] → token pyramid (quantised in float32)."""
        self.tokenizer.check_images(images)
        if self._graphed(images.shape[0]):  # clones: the next replay reuses the outputs
            tokens = self.vae_graphs.run(("encode", tuple(images.shape), images.dtype),
                                         self._encode_tokens, (images,), self.device)
            return [t.clone() for t in tokens]
        return list(self._encode_tokens(images))

    # ---------------------------------------------------------------------------- sampling
    def scale_model(self, labels: torch.Tensor) -> tuple[ScaleModel, dict[str, Any]]:
        """The fast runner, prepared for these labels, with the sync-free filter-and-draw,
        the matrix bicubic upsampling, and every step's pure part replayed from the runner's
        CUDA graphs (one per step kind, scale and batch; eager off CUDA)."""
        self.runner.begin(labels, self.null_class)
        return self.runner, {"drawer": GUMBEL, "upsample": self._upsample,
                             "region": self._region}

    def _region(self, key: Hashable, fn: Callable[..., Any],
                inputs: Sequence[torch.Tensor | None]) -> Any:
        """The sampler's :class:`~hmar_core.sampler.Region`: the runner's graph cache."""
        return self.runner.graphs.run(key, fn, inputs, self.device)
