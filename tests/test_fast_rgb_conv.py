"""The decoder's last convolution as a Triton kernel (:mod:`hmar_core.fast.rgb_conv`).

Against float64 ``F.conv2d`` (padding 1, clamped to [-1, 1] as the engine's decode does), over
shapes that leave partial channel chunks and partial row segments, strided inputs and images
smaller than the kernel's tiles; then through the fast engine: decoding and whole generations
with the kernel agree with the engine's own convolution. Without a GPU the kernel runs through
Triton's CPU interpreter (``TRITON_INTERPRET`` is set before the module is imported).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from triton_modules import require_kernels

rgb_conv = require_kernels("hmar_core.fast.rgb_conv")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _conv(cin: int, cout: int, seed: int, bias: bool = True, scale: float = 1.0) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias).to(DEVICE).requires_grad_(False)
    conv.weight.mul_(scale)
    return conv


def _features(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(DEVICE, dtype)


def _exact(conv: nn.Conv2d, x: torch.Tensor, clamp: bool) -> torch.Tensor:
    bias = None if conv.bias is None else conv.bias.double()
    out = F.conv2d(x.double(), conv.weight.double(), bias, padding=1)
    return out.clamp(-1, 1) if clamp else out


@pytest.mark.parametrize("batch, cin, cout, height, width", [
    (2, 64, 3, 16, 16),   # the demo decoder's width, one channel chunk
    (1, 40, 3, 7, 9),     # a partial channel chunk, odd sizes
    (1, 96, 3, 3, 130),   # two chunks (the second partial), two row segments (partial)
    (3, 16, 5, 1, 1),     # one pixel: every neighbour is padding
    (1, 24, 1, 5, 4),
])
@pytest.mark.parametrize("clamp", [True, False])
def test_float32_matches_float64_conv(batch, cin, cout, height, width, clamp):
    conv = _conv(cin, cout, seed=cin + cout)
    x = _features(batch, cin, height, width, seed=height * width)
    got = rgb_conv.RgbConv(conv, torch.float32, clamp=clamp)(x)
    exact = _exact(conv, x, clamp)
    assert got.dtype == torch.float32 and got.shape == exact.shape
    # float32 sums of 9·C products in another order than F.conv2d's
    ours = float((got.double() - exact).abs().max())
    torch_error = float((F.conv2d(x, conv.weight, conv.bias, padding=1).double()
                         - _exact(conv, x, False)).abs().max())
    assert ours <= 4 * torch_error + 1e-6, (ours, torch_error)
    if clamp and float(_exact(conv, x, False).abs().max()) > 1.0:
        assert float(got.abs().max()) == 1.0  # the clamp did cut


def test_any_layout_and_no_bias():
    conv = _conv(32, 3, seed=1, bias=False)
    x = _features(2, 32, 6, 11, seed=2)
    module = rgb_conv.RgbConv(conv, torch.float32, clamp=False)
    plain = module(x)
    assert torch.allclose(plain.double(), _exact(conv, x, False), atol=1e-5)
    assert torch.equal(module(x.to(memory_format=torch.channels_last)), plain)
    wide = _features(2, 32, 6, 20, seed=2)[..., 3:14]  # a strided view
    assert torch.allclose(module(wide).double(), _exact(conv, wide, False), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_the_torch_error(dtype):
    """Half-precision features, float32 accumulation: no further from float64 than the
    convolution in that dtype (plus one half-precision step of the output)."""
    if DEVICE.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the CPU interpreter's dot has no bfloat16")
    conv = _conv(48, 3, seed=3, scale=0.2)
    x = _features(1, 48, 9, 19, seed=4, dtype=dtype)
    got = rgb_conv.RgbConv(conv, dtype, clamp=False)(x)
    exact = _exact(conv.to(dtype), x, False)
    ours = float((got.double() - exact).abs().max())
    torch_out = F.conv2d(x.float(), conv.weight.to(dtype).float(), conv.bias.float(), padding=1)
    reference_error = float((torch_out.to(dtype).double() - exact).abs().max())
    assert ours <= reference_error + 1e-3, (ours, reference_error)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(8, 3, 5, padding=2), nn.Conv2d(8, 3, 3, padding=1, stride=2),
    nn.Conv2d(8, 3, 3, padding=0), nn.Conv2d(8, 17, 3, padding=1),
    nn.Conv2d(8, 4, 3, padding=1, groups=2), nn.Conv2d(8, 3, 3, padding=1, padding_mode="reflect"),
])
def test_other_convolutions_are_refused(conv):
    with pytest.raises(ValueError, match="3x3 convolution"):
        rgb_conv.RgbConv(conv, torch.float32)


def test_wrong_inputs_are_refused():
    module = rgb_conv.RgbConv(_conv(8, 3, seed=0), torch.float32)
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        module(_features(1, 7, 4, 4, seed=0))
    with pytest.raises(ValueError, match="float16"):
        module(_features(1, 8, 4, 4, seed=0, dtype=torch.float16))
    assert module(_features(0, 8, 4, 4, seed=0)).shape == (0, 3, 4, 4)


def test_rgb_conv_for_auto_and_requested(monkeypatch):
    conv = _conv(8, 3, seed=5)
    assert rgb_conv.rgb_conv_for(conv, torch.float32, False) is None
    built = rgb_conv.rgb_conv_for(conv, torch.float32, True)
    assert isinstance(built, rgb_conv.RgbConv)
    if DEVICE.type == "cpu":
        assert rgb_conv.rgb_conv_for(conv, torch.float32, None) is None  # auto: CUDA only
        monkeypatch.setattr(rgb_conv, "INTERPRETED", False)
        with pytest.raises(ValueError, match="CUDA device"):
            rgb_conv.rgb_conv_for(conv, torch.float32, True)


def test_a_kernel_that_disagrees_is_refused(monkeypatch):
    """The one-time check catches a wrong kernel: auto falls back, True raises."""
    conv = _conv(8, 3, seed=6)
    real_forward = rgb_conv.RgbConv.forward
    monkeypatch.setattr(rgb_conv.RgbConv, "forward",
                        lambda self, x: real_forward(self, x) * 0.5)
    with pytest.raises(RuntimeError, match="disagrees"):
        rgb_conv.rgb_conv_for(conv, torch.float32, True)
    if DEVICE.type == "cuda":
        assert rgb_conv.rgb_conv_for(conv, torch.float32, None) is None


# ------------------------------------------------------------------------- through the engine
@pytest.fixture(scope="module")
def pipe():
    from hmar_core import Pipeline

    return Pipeline.random(seed=0, device=DEVICE)


@pytest.mark.parametrize("compile_vae", [False, True])
def test_engine_decode_matches_its_convolution(pipe, compile_vae):
    """Also with the decoder's features compiled (the CUDA default) and the kernel after."""
    with_kernel = pipe.with_engine("fast", dtype=torch.float32, rgb_conv=True,
                                   compile_vae=compile_vae)
    without = pipe.with_engine("fast", dtype=torch.float32, rgb_conv=False, compile_vae=False)
    assert with_kernel.backend._rgb_conv is not None and without.backend._rgb_conv is None
    images = torch.rand(3, 3, pipe.image_size, pipe.image_size, device=DEVICE) * 2 - 1
    with torch.no_grad():
        f_hat = pipe.tokenizer.fhat_from_tokens(pipe.tokenizer.encode(images))[-1]
        got, want = with_kernel.backend.decode(f_hat), without.backend.decode(f_hat)
    assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape
    assert float(got.abs().max()) <= 1.0
    assert float((got - want).abs().max()) <= (1e-4 if compile_vae else 1e-5)
    if compile_vae:
        assert with_kernel.backend._decoder.compiled is not None, "compiling fell back"


def test_generation_with_the_kernel_keeps_tokens_and_pixels(pipe):
    """Same tokens (the kernel only decodes) and the same pictures to a float32 rounding."""
    runs = [pipe.with_engine("fast", dtype=torch.float32, rgb_conv=flag, compile_vae=False)
            .generate([1, 2], seed=3, steps=1) for flag in (True, False)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0].tokens, runs[1].tokens))
    assert float((runs[0].images - runs[1].images).abs().max()) <= 1e-5


@pytest.mark.gpu
def test_gpu_bfloat16_at_the_benchmark_size():
    """The decoder's real shape on the GPU (256 px, 160 channels, bf16 features)."""
    conv = _conv(160, 3, seed=7, scale=0.1)
    x = _features(2, 160, 256, 256, seed=8, dtype=torch.bfloat16)
    got = rgb_conv.RgbConv(conv, torch.bfloat16)(x)
    exact = _exact(conv.to(torch.bfloat16), x, True)
    torch_out = F.conv2d(x, conv.weight.to(torch.bfloat16), conv.bias.to(torch.bfloat16),
                         padding=1).clamp(-1, 1)
    assert float((got.double() - exact).abs().max()) <= float(
        (torch_out.double() - exact).abs().max()) + 1e-3
