"""The fast engine's VQ-VAE decoder: the tokenizer's decoder with a GPU-friendly output conv.

The decoder ends in a 3×3 convolution from C features to 3 colour channels at full
resolution. With 3 output channels cuDNN falls back to a direct (non tensor-core) kernel: on
an H100 it took 25 ms of a 256 px, B = 64 decode that cost ~125 ms in all
(``docs/gpu-logs/2026-12-07-session9/profile_b64_h100.log``). :class:`PaddedOutputConv` runs
it as a convolution with ``channels`` outputs whose extra filters are zero and keeps the first
three: the same products for the real channels, a tensor-core kernel, a few extra FLOPs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..tokenizer import Decoder

__all__ = ["DecoderFeatures", "PaddedOutputConv", "fast_decoder"]


class DecoderFeatures(nn.Module):
    """``decoder.features``: the decoder up to (not including) its output convolution."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder.features(z)


class PaddedOutputConv(nn.Module):
    """``conv`` computed with its output channels zero-padded to ``channels``, then sliced.

    The padded weight and bias are buffers copied from ``conv`` when this module is built
    (they follow later ``.to(dtype)`` calls, not later changes to ``conv``'s weights).
    """

    def __init__(self, conv: nn.Conv2d, channels: int) -> None:
        super().__init__()
        out = conv.out_channels
        if channels < out:
            raise ValueError(f"channels ({channels}) must be >= the conv's {out} outputs")
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("PaddedOutputConv needs an ungrouped conv with numeric zero padding")
        weight = conv.weight.detach()
        padded = weight.new_zeros((channels, *weight.shape[1:]))
        padded[:out] = weight
        bias = weight.new_zeros(channels)
        if conv.bias is not None:
            bias[:out] = conv.bias.detach()
        self.register_buffer("weight", padded)
        self.register_buffer("bias", bias)
        self.out_channels = out
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        return y[:, : self.out_channels]


def fast_decoder(post_quant_conv: nn.Module, decoder: Decoder, pad_channels: int) -> nn.Module:
    """``post_quant_conv`` then ``decoder``, its output conv padded to ``pad_channels``
    outputs when that is more than it has (0: the decoder as it is). Shares the modules."""
    if pad_channels <= decoder.conv_out.out_channels:
        return nn.Sequential(post_quant_conv, decoder)
    return nn.Sequential(post_quant_conv, DecoderFeatures(decoder),
                         PaddedOutputConv(decoder.conv_out, pad_channels))
