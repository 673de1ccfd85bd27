"""FP8 GEMMs of the fast engine (``fp8=True``): the quantisation against its definition, the
fused quantising kernels against the torch reference (bit for bit), the GEMM against float64,
and the runner's logits against the float32 reference within FP8's error.

Without a GPU the Triton kernels run through the CPU interpreter (as in
``tests/test_fast_fused.py``) and ``torch._scaled_mm`` runs on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from small_transformer import small_transformer
from triton_modules import kernel_module

from hmar_core import Pipeline
from hmar_core.fast import FastRunner
from hmar_core.fast.fp8 import E4M3, E4M3_MAX, Fp8Weight, fp8_linear, quantize_rows
from hmar_core.transformer import HMARTransformer

fused, HAS_KERNELS = kernel_module("hmar_core.fast.fused")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_kernels = pytest.mark.skipif(not HAS_KERNELS, reason="needs CUDA or TRITON_INTERPRET=1")

# every finite e4m3fn value, ascending (the grid the quantisation rounds to)
GRID = np.unique(torch.arange(256, dtype=torch.uint8).view(E4M3).float().numpy())
GRID = GRID[np.isfinite(GRID)]


def _nearest_even_on_grid(values: np.ndarray) -> np.ndarray:
    """Round to nearest on the e4m3 grid, ties to the value with an even mantissa (float64)."""
    index = np.clip(np.searchsorted(GRID, values), 1, len(GRID) - 1)
    low, high = GRID[index - 1], GRID[index]
    pick_high = (high - values) < (values - low)
    tie = (high - values) == (values - low)
    even_high = (torch.from_numpy(high.astype(np.float32)).to(E4M3).view(torch.uint8)
                 .numpy() & 1) == 0
    return np.where(pick_high | (tie & even_high), high, low)


def _rows(seed: int, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    spread = torch.logspace(-4, 3, shape[0], dtype=torch.float64)[:, None]  # tiny to large rows
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * spread).to(dtype)


# --------------------------------------------------------------------------- quantisation
def test_quantize_rows_is_round_to_nearest_even_of_the_scaled_row():
    x = _rows(0, (24, 80))
    x[3] = 0.0  # an all-zero row
    x[5, 7] = -x[5].abs().max() * 2  # a negative row maximum
    q, scale = quantize_rows(x)
    assert q.dtype == E4M3 and q.shape == x.shape and scale.shape == (24, 1)
    amax = x.double().abs().amax(1, keepdim=True).clamp_min(1e-12)
    assert torch.allclose(scale.double(), amax / E4M3_MAX, rtol=1e-6, atol=0)
    # the largest magnitude of every non-zero row is exactly ±448
    peaks = q.float().abs().amax(1)
    assert torch.all(peaks[x.abs().amax(1) > 0] == E4M3_MAX) and peaks[3] == 0
    scaled = (x.float() * (E4M3_MAX / amax.float())).double().numpy()
    np.testing.assert_array_equal(q.float().numpy(), _nearest_even_on_grid(scaled))
    # the dequantised error: at most half a grid step (1/16 relative for normal values)
    error = (q.float().double() * scale.double() - x.double()).abs()
    assert torch.all(error <= x.double().abs() / 16 + scale.double() * 2.0 ** -10)


def test_fp8_weight_checks_and_dequantizes():
    weight = _rows(1, (32, 48))
    packed = Fp8Weight.from_linear(weight, torch.ones(32), torch.float16)
    assert packed.q.shape == (32, 48) and packed.scale.shape == (1, 32)
    assert packed.bias is not None and packed.bias.dtype == torch.float16
    rel = float((packed.dequantized() - weight).norm() / weight.norm())
    assert 0 < rel < 1 / 16, rel
    with pytest.raises(ValueError, match="multiples of 16"):
        Fp8Weight.from_linear(torch.randn(24, 40), None, torch.float16)


def test_fp8_linear_is_the_product_of_the_dequantized_operands():
    """On a GPU: ``torch._scaled_mm``; on the CPU: its float32 emulation."""
    x, weight, bias = (t.to(DEVICE) for t in (_rows(2, (20, 64)), torch.randn(48, 64),
                                               torch.randn(48)))
    out_dtype = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
    packed = Fp8Weight.from_linear(weight, bias, out_dtype)
    q, scale = quantize_rows(x)
    got = fp8_linear(q, scale, packed, out_dtype)
    want = (q.double() * scale.double()) @ packed.dequantized().double().T + bias.double()
    assert got.shape == (20, 48) and got.dtype == out_dtype
    rel = float((got.double() - want).norm() / want.norm())
    assert rel < (1e-5 if out_dtype == torch.float32 else 4e-3), rel  # (bf16's rounding)
    # and within FP8's error of the unquantised product
    exact = x.double() @ weight.double().T + bias.double()
    assert float((got.double() - exact).norm() / exact.norm()) < 0.05


# ------------------------------------------------------------------------- fused kernels
@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(19, 80), (3, 130), (1, 16)])
def test_fused_quantize_rows_equals_the_torch_reference(dtype, shape):
    x = _rows(3, shape, dtype).to(DEVICE)
    q, scale = fused.quantize_rows(x)
    want_q, want_scale = quantize_rows(x)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8))  # bit for bit, -0 too
    assert torch.equal(scale, want_scale)


@needs_kernels
def test_fused_gelu_quantize_matches_gelu_then_quantize():
    x = (torch.randn(33, 96, generator=torch.Generator().manual_seed(4)) * 3).half().to(DEVICE)
    q, scale = fused.quantize_rows(x, gelu=True)
    want_q, want_scale = quantize_rows(F.gelu(x.float(), approximate="tanh"))
    assert torch.allclose(scale, want_scale, rtol=1e-5, atol=0)
    got, want = q.float() * scale, want_q.float() * want_scale
    # GELU's float32 rounding may move a value across a rounding boundary: one step at most
    differ = got != want
    assert float(differ.float().mean()) < 0.01
    assert torch.all((got - want).abs()[differ] <= want.abs()[differ] / 8 + want_scale.expand_as(
        want)[differ] * 2.0 ** -8)


@needs_kernels
def test_fused_residual_ln_modulate_fp8_quantizes_its_own_output():
    rows, tokens, width = 2, 7, 96
    gen = torch.Generator().manual_seed(5)
    x, delta = (torch.randn(rows, tokens, width, generator=gen).to(DEVICE) for _ in range(2))
    gamma, scale, shift = (torch.randn(rows, width, generator=gen).to(DEVICE) for _ in range(3))
    x_plain, x_fp8 = x.clone(), x.clone()
    h = fused.residual_ln_modulate(x_plain, delta, gamma, scale, shift, eps=1e-6,
                                   out_dtype=torch.float32)
    q, h_scale = fused.residual_ln_modulate_fp8(x_fp8, delta, gamma, scale, shift, eps=1e-6)
    assert torch.equal(x_fp8, x_plain)  # the residual update is the same
    want_q, want_scale = quantize_rows(h)
    assert q.shape == (rows * tokens, width) and h_scale.shape == (rows * tokens, 1)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8))
    assert torch.equal(h_scale, want_scale)
    q0, _ = fused.residual_ln_modulate_fp8(x, None, None, scale, shift, eps=1e-6)  # no residual
    assert torch.equal(q0.view(torch.uint8), quantize_rows(fused.ln_modulate(
        x, scale, shift, eps=1e-6, out_dtype=torch.float32))[0].view(torch.uint8))


# --------------------------------------------------------------------------------- runner
def _model() -> HMARTransformer:
    return small_transformer(width=64, heads=4, std=0.05, device=DEVICE)


def _teacher_forced(runner: FastRunner, model: HMARTransformer) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x_ns = torch.randn(2, model.cfg.seq_len - 1, model.cfg.latent_channels, generator=gen)
    x_mask = torch.randn(x_ns.shape, generator=gen)
    masked = torch.rand(x_ns.shape[:2], generator=gen) < 0.4
    with torch.no_grad():
        return runner.teacher_forced(torch.tensor([3, 10], device=DEVICE), x_ns.to(DEVICE),
                                     x_mask.to(DEVICE), masked.to(DEVICE))


@pytest.mark.parametrize("fused_kernels", [False, pytest.param(True, marks=needs_kernels)])
def test_runner_fp8_logits_within_fp8_error_of_float32(fused_kernels):
    model = _model()
    want = _teacher_forced(FastRunner(model, torch.float32, cuda_graphs=False, fused=False),
                           model)
    runner = FastRunner(model, torch.float32, cuda_graphs=False, fused=fused_kernels, fp8=True,
                        fp8_min_rows=0)
    # (float32 out on the CPU; CUDA builds may support only bf16 out for row-wise scales)
    assert runner.fp8_dtype in (torch.float32, torch.bfloat16) and runner.fused == fused_kernels
    got = _teacher_forced(runner, model)
    rel = float((got - want).norm() / want.norm())
    top1 = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    assert 1e-4 < rel < 0.05 and top1 >= 0.9, (rel, top1)  # really FP8, and close


def test_fp8_min_rows_keeps_small_passes_in_the_run_dtype():
    """Passes over fewer token rows than ``fp8_min_rows`` are exactly the plain runner's;
    larger ones run FP8 (here: the 2 rows × 25 tokens of the last scale, not the others)."""
    model = _model()
    plain = _teacher_forced(FastRunner(model, torch.float32, cuda_graphs=False, fused=False),
                            model)
    split = _teacher_forced(FastRunner(model, torch.float32, cuda_graphs=False, fused=False,
                                       fp8=True, fp8_min_rows=2 * 25), model)
    last = model.cfg.patch_nums[-1] ** 2
    assert torch.equal(split[:, :-last], plain[:, :-last])
    assert not torch.allclose(split[:, -last:], plain[:, -last:], rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="fp8_min_rows"):
        FastRunner(model, torch.float32, fp8=True, fp8_min_rows=-1)


@needs_kernels
def test_runner_fp8_fused_equals_unfused():
    model = _model()
    plain = _teacher_forced(FastRunner(model, torch.float32, cuda_graphs=False, fused=False,
                                       fp8=True, fp8_min_rows=0), model)
    fast = _teacher_forced(FastRunner(model, torch.float32, cuda_graphs=False, fused=True,
                                      fp8=True, fp8_min_rows=0), model)
    rel = float((fast - plain).norm() / plain.norm())
    assert rel < 1e-2, rel  # the same quantisation; LayerNorm's rounding may move a step


@pytest.mark.gpu
def test_runner_fp8_half_precision_with_cuda_graphs():
    """The configuration the engine runs on a GPU: fp16 blocks, FP8 GEMMs, graphs, fused."""
    model = _model()
    want = _teacher_forced(FastRunner(model, torch.float32, cuda_graphs=False, fused=False),
                           model)
    runner = FastRunner(model, torch.float16, residual_dtype=torch.float32, fp8=True,
                        fp8_min_rows=0)
    assert runner.fused and runner.fp8_dtype in (torch.float16, torch.bfloat16)
    for _ in range(2):  # capture, then replay
        got = _teacher_forced(runner, model)
        rel = float((got - want).norm() / want.norm())
        top1 = float((got.argmax(-1) == want.argmax(-1)).float().mean())
        assert rel < 0.05 and top1 >= 0.9, (rel, top1)


def test_pipeline_fp8_option_runs_every_method_on_the_fp8_engine():
    pipe = Pipeline.random(engine="fast", seed=0, fp8=True, fp8_min_rows=0)
    plain = Pipeline.random(engine="fast", seed=0)
    assert "FP8" in repr(pipe.backend) and pipe.engine == "fast"
    out = pipe.generate(class_ids=[1, 2], seed=3)
    again = pipe.generate(class_ids=[1, 2], seed=3)
    assert all(torch.equal(a, b) for a, b in zip(out.tokens, again.tokens))  # per-engine seeds
    # an inpaint keeps every pixel outside the mask (+ feather) as it was
    image = Image.fromarray((plain.generate(class_ids=[4], seed=1).images[0].permute(1, 2, 0)
                             * 255).round().byte().numpy())
    mask = np.zeros((image.height, image.width), dtype=bool)
    mask[: image.height // 2] = True
    edited = pipe.inpaint(image, mask, seed=2, feather=0)
    before, after = np.asarray(image), np.asarray(edited)
    assert np.array_equal(before[~mask], after[~mask]) and not np.array_equal(before, after)
    with pytest.raises(ValueError, match="fast engine"):
        Pipeline.random(engine="reference", fp8=True)


def test_fp8_flags_of_the_cli_and_the_app(tmp_path):
    """``--fp8`` (``python -m hmar_core …`` and ``launch.py``) loads the fast engine with FP8
    GEMMs, turning ``--engine auto`` into fast; with ``--engine reference`` it is refused."""
    from app import launcher
    from hmar_core.cli import main
    from hmar_core.cli_common import load_pipeline
    from hmar_core.engine import engine_with_fp8

    assert engine_with_fp8("auto", False) == ("auto", {})
    assert engine_with_fp8("auto", True) == ("fast", {"fp8": True})
    with pytest.raises(ValueError, match="--fp8"):
        engine_with_fp8("reference", True)
    folder = tmp_path / "model"
    Pipeline.random(seed=0).save_pretrained(folder)
    pipe = load_pipeline(folder, fp8=True)
    assert pipe.engine == "fast" and "FP8" in repr(pipe.backend)
    out = tmp_path / "grid.png"
    assert main(["generate", "--checkpoint", str(folder), "--fp8", "--seed", "1",
                 "--out", str(out)]) == 0 and out.is_file()
    assert main(["generate", "--checkpoint", str(folder), "--fp8", "--engine", "reference",
                 "--out", str(tmp_path / "refused.png")]) == 2
    served, _ = launcher.load_pipeline(
        launcher.parse_args(["--checkpoint", str(folder), "--fp8"]), torch.device("cpu"))
    assert "FP8" in repr(served.backend)
