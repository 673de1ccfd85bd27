"""The decoder's last convolution (3×3, C → a few colour channels) as one Triton kernel.

Origin: HMAR Studio. A B = 64 profile of generation at 256 px (session 9, one H100) showed
cuDNN answering this convolution with a direct, non-tensor-core kernel
(``convolve_common_engine_float_NHWC``): 25 ms of the decoder's 125 ms for a few GFLOP. Here
every program computes one row segment of ``BLOCK_P`` output pixels of one image: for each of
the nine taps and each chunk of ``BLOCK_C`` input channels it loads the shifted (pixels ×
channels) tile of the features (zero outside the image, i.e. padding 1) and multiplies it on
the tensor cores with the tap's (channels × ``N_PAD``) weights, whose output columns beyond the
real ones are zero. The bias, the clamp to [-1, 1] and the float32 output of the engine's
decode are its epilogue, so the decoder's output needs no further pass.

:class:`RgbConv` packs the weights once (``(9, C, N_PAD)`` in the features' dtype). Float32
features multiply in IEEE float32 (tests; no TF32), half-precision ones with float32
accumulation. Forward only; CUDA-graph safe (no host synchronisation, ``torch.empty`` output).

Hardware tested: CPU interpreter (``TRITON_INTERPRET=1``) by ``tests/test_fast_rgb_conv.py``
against float64 ``F.conv2d``. One NVIDIA H100 (session 11): the engine's one-time check passed
and the public-API A/B ran with it (``--compare rgb_conv=false``, BENCHMARKS.md); the GPU run
of the test file was cut off by its call's time limit after its first 7 tests had passed
(each new shape compiles the kernel), so its ``gpu``-marked test has not run yet.
"""

# ruff: noqa: ANN001 (the @triton.jit kernel's arguments are typed by Triton, not annotated)
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton  # type: ignore[import-untyped]
import triton.language as tl  # type: ignore[import-untyped]
from torch import nn

from .checked import checked_kernel

__all__ = ["INTERPRETED", "RgbConv", "rgb_conv_for"]

# Whether the kernel was decorated for Triton's CPU interpreter (read once, at import).
INTERPRETED = bool(triton.knobs.runtime.interpret)

_N_PAD = 16  # tensor-core products need at least 16 output columns


@triton.jit
def _rgb_conv_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr,
    height, width,
    sxb, sxc, sxh, sxw,  # strides of the (B, C, H, W) features, in elements
    CHANNELS: tl.constexpr, COUT: tl.constexpr, N_PAD: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, CLAMP: tl.constexpr, IEEE: tl.constexpr,
):
    row = tl.program_id(0)  # image b, output row y
    b = (row // height).to(tl.int64)
    y = row % height
    xs = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,) output columns
    cols = tl.arange(0, N_PAD)
    acc = tl.zeros((BLOCK_P, N_PAD), dtype=tl.float32)
    for tap in tl.static_range(9):
        yy = y + (tap // 3 - 1)
        xx = xs + (tap % 3 - 1)
        inside = (xx >= 0) & (xx < width) & (yy >= 0) & (yy < height)
        base = x_ptr + b * sxb + yy.to(tl.int64) * sxh + xx.to(tl.int64) * sxw  # (BLOCK_P,)
        for c0 in tl.static_range(0, CHANNELS, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            a = tl.load(base[:, None] + cs[None, :].to(tl.int64) * sxc,
                        mask=inside[:, None] & (cs[None, :] < CHANNELS), other=0.0)
            w = tl.load(w_ptr + (tap * CHANNELS + cs[:, None]) * N_PAD + cols[None, :],
                        mask=cs[:, None] < CHANNELS, other=0.0)
            if IEEE:
                acc += tl.dot(a, w, input_precision="ieee")
            else:
                acc += tl.dot(a, w)
    acc += tl.load(bias_ptr + cols)[None, :]
    if CLAMP:
        acc = tl.minimum(tl.maximum(acc, -1.0), 1.0)
    hw = height * width
    offset = b * COUT * hw + y * width + xs[:, None] + cols[None, :].to(tl.int64) * hw
    tl.store(out_ptr + offset, acc, mask=(xs[:, None] < width) & (cols[None, :] < COUT))


class RgbConv(nn.Module):
    """``conv`` (a 3×3, stride-1, padding-1 convolution to at most 16 channels) as one Triton
    kernel that writes float32, optionally clamped to [-1, 1].

    Args:
        conv: the convolution; its weights are copied (packed per tap, padded to 16 output
            columns) in ``dtype``.
        dtype: the dtype of the features it will read (the VAE's).
        clamp: clamp the output to [-1, 1] (the engine's decode does).

    Raises:
        ValueError: a convolution of another shape (kernel, stride, padding, groups, dilation
            or more than 16 output channels).
    """

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, clamp: bool = True) -> None:
        super().__init__()
        shape_ok = (conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                    and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
                    and conv.padding_mode == "zeros" and conv.out_channels <= _N_PAD)
        if not shape_ok:
            raise ValueError(f"RgbConv needs a 3x3 convolution with stride 1, padding 1, one "
                             f"group and at most {_N_PAD} output channels, got {conv}")
        cout, cin = conv.out_channels, conv.in_channels
        weight = conv.weight.detach()  # (cout, cin, 3, 3) → (9, cin, N_PAD)
        packed = torch.zeros(9, cin, _N_PAD, dtype=dtype, device=weight.device)
        packed[:, :, :cout] = weight.permute(2, 3, 1, 0).reshape(9, cin, cout).to(dtype)
        bias = torch.zeros(_N_PAD, dtype=torch.float32, device=weight.device)
        if conv.bias is not None:
            bias[:cout] = conv.bias.detach().float()
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.out_channels = cout
        self.in_channels = cin
        self.clamp = clamp

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features in the packed dtype, any strides → (B, cout, H, W) float32."""
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(f"RgbConv expects (B, {self.in_channels}, H, W) features, got "
                             f"{tuple(features.shape)}")
        if features.dtype != self.packed.dtype:
            raise ValueError(f"RgbConv was packed for {self.packed.dtype} features, got "
                             f"{features.dtype}")
        batch, channels, height, width = features.shape
        out = torch.empty(batch, self.out_channels, height, width, dtype=torch.float32,
                          device=features.device)
        if out.numel() == 0:
            return out
        block_p = min(128, max(16, triton.next_power_of_2(width)))
        block_c = min(64, max(16, triton.next_power_of_2(channels)))
        grid = (batch * height, triton.cdiv(width, block_p))
        _rgb_conv_kernel[grid](
            features, self.packed, self.bias, out, height, width, *features.stride(),
            CHANNELS=channels, COUT=self.out_channels, N_PAD=_N_PAD, BLOCK_P=block_p,
            BLOCK_C=block_c,
            CLAMP=self.clamp, IEEE=features.dtype == torch.float32,
            num_warps=4,
        )
        return out


def rgb_conv_for(conv: nn.Conv2d, dtype: torch.dtype, requested: bool | None
                 ) -> RgbConv | None:
    """The kernel for ``conv`` if it is to run, else ``None`` (the caller keeps ``conv``).

    Auto (``requested is None``): on CUDA, after one check against ``F.conv2d`` on a small
    input (which also compiles the kernel before any graph capture); a failure or
    disagreement is logged and ``None`` returned. ``True`` raises instead (on CPU the kernel
    needs ``TRITON_INTERPRET=1``); ``False`` gives ``None``.
    """
    def build() -> RgbConv:
        module = RgbConv(conv, dtype)
        gen = torch.Generator(device="cpu").manual_seed(0)
        probe = torch.randn(1, conv.in_channels, 5, 37, generator=gen).to(conv.weight.device,
                                                                          dtype)
        with torch.no_grad():
            want = F.conv2d(probe.float(), conv.weight.to(dtype).float(),
                            None if conv.bias is None else conv.bias.float(), padding=1)
            error = float((module(probe) - want.clamp(-1, 1)).abs().max())
        scale = float(want.abs().max().clamp_min(1e-6))
        tolerance = 1e-4 if dtype == torch.float32 else 1e-2
        if not error <= tolerance * scale:
            raise RuntimeError(f"the RGB conv kernel disagrees with F.conv2d (max error "
                               f"{error:.2e}, output scale {scale:.2e})")
        return module

    return checked_kernel(requested, conv.weight.device, "the RGB conv kernel",
                          "the convolution", build,
                          lambda: INTERPRETED)
