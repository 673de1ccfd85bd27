"""HMAR's attention of one pass as one Triton kernel (:mod:`hmar_core.fast.attention`).

Against a float64 reference (q/k normalised, softmax in float64) over shapes that leave partial
query and key tiles, several key tiles, one token, head dims that are not powers of two and
strided inputs; in half precision against the two-kernel torch path it replaces; then through
the runner (logits of both branches and the CFG pass) and the engine (an inpaint gives the same
tokens and pixels with and without it). Without a GPU the kernel runs through Triton's CPU
interpreter (``TRITON_INTERPRET`` is set before the module is imported).
"""

from __future__ import annotations

import pytest
import torch
from small_transformer import assert_runners_agree, small_transformer
from triton_modules import require_kernels

from hmar_core.fast import FastRunner

attention = require_kernels("hmar_core.fast.attention")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _qkv(rows: int, tokens: int, heads: int, head_dim: int, seed: int,
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    flat = torch.randn(rows, tokens, 3 * heads * head_dim, generator=gen)
    return flat.to(DEVICE, dtype).view(rows, tokens, 3, heads, head_dim)


def _q_mult(heads: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(heads, generator=gen) * 20 + 0.5).to(DEVICE)  # temperatures 0.5–20.5


def _exact(qkv: torch.Tensor, q_mult: torch.Tensor) -> torch.Tensor:
    """float64: q̂ = q·mult/‖q‖, k̂ = k/‖k‖, softmax(q̂·k̂ᵀ)·v, heads side by side."""
    q, k, v = qkv.double().unbind(2)  # (R, n, H, D)
    q = q * (q_mult.double()[:, None] / q.norm(dim=-1, keepdim=True))
    k = k / k.norm(dim=-1, keepdim=True)
    scores = torch.einsum("rqhd,rkhd->rhqk", q, k)
    out = torch.einsum("rhqk,rkhd->rqhd", scores.softmax(-1), v)
    return out.reshape(*qkv.shape[:2], -1)


@pytest.mark.parametrize("rows, tokens, heads, head_dim, block", [
    (1, 1, 2, 64, 64),     # the 1×1 scale: one key, 15 padded query rows
    (2, 37, 3, 64, 64),    # one partial tile
    (1, 100, 2, 48, 16),   # head dim padded to 64; 7 query and 7 key tiles, the last partial
    (3, 64, 1, 32, 32),    # exact tiles
    (1, 256, 2, 64, 64),   # the 16×16 scale: 4 key tiles
])
def test_float32_matches_float64(rows, tokens, heads, head_dim, block):
    qkv = _qkv(rows, tokens, heads, head_dim, seed=tokens)
    q_mult = _q_mult(heads, seed=heads)
    got = attention.qk_norm_attention(qkv, q_mult, block_m=block, block_n=block)
    assert got.shape == (rows, tokens, heads * head_dim) and got.dtype == torch.float32
    assert got.is_contiguous()
    assert float((got.double() - _exact(qkv, q_mult)).abs().max()) < 2e-5


def test_tile_sizes_do_not_change_the_result():
    qkv, q_mult = _qkv(1, 50, 2, 32, seed=5), _q_mult(2, seed=6)
    want = _exact(qkv, q_mult)
    for block_m, block_n in ((16, 64), (64, 16), (32, 32)):
        got = attention.qk_norm_attention(qkv, q_mult, block_m=block_m, block_n=block_n)
        assert float((got.double() - want).abs().max()) < 2e-5, (block_m, block_n)


def test_large_batches_launch_in_slices_of_rows():
    """More (row, head) pairs than one launch's grid axis takes: the same output."""
    qkv, q_mult = _qkv(5, 9, 3, 16, seed=17), _q_mult(3, seed=18)
    want = attention.qk_norm_attention(qkv, q_mult)
    for limit in (7, 3, 1):  # 2 rows, 1 row (and at least 1 row) per launch
        got = attention.qk_norm_attention(qkv, q_mult, max_grid_y=limit)
        assert torch.equal(got, want), limit


def test_rows_at_any_stride():
    """A token slice of a longer pass: rows are further apart than n tokens."""
    wide = _qkv(2, 40, 2, 32, seed=7)
    qkv = wide[:, 5:30]
    assert qkv.stride(0) != qkv.shape[1] * qkv.stride(1)
    q_mult = _q_mult(2, seed=8)
    got = attention.qk_norm_attention(qkv, q_mult)
    assert float((got.double() - _exact(qkv, q_mult)).abs().max()) < 2e-5


def test_a_zero_query_or_key_is_clamped_like_normalize():
    """‖q‖ = 0 gives a zero query (uniform attention), as F.normalize's clamp does."""
    qkv = _qkv(1, 20, 1, 32, seed=9)
    qkv[0, 3, 0] = 0.0  # a zero query
    qkv[0, 7, 1] = 0.0  # a zero key
    q_mult = _q_mult(1, seed=10)
    got = attention.qk_norm_attention(qkv, q_mult)
    want = attention.reference_qk_norm_attention(qkv, q_mult)
    assert torch.isfinite(got).all()
    assert float((got - want).abs().max()) < 2e-5
    assert torch.allclose(got[0, 3, :32], qkv[0, :, 2, 0].mean(0), atol=1e-5)


@pytest.mark.parametrize("dtype", [
    torch.float16,
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
        attention.INTERPRETED, reason="the CPU interpreter gets tl.dot of bf16 tiles wrong")),
])
def test_half_precision_within_the_torch_paths_error(dtype):
    """In the run dtype the kernel is at most a rounding further from float64 than the
    two-kernel path (q/k norm, then SDPA) that it replaces."""
    qkv = _qkv(2, 100, 3, 64, seed=11, dtype=dtype)
    q_mult = _q_mult(3, seed=12)
    exact = _exact(qkv, q_mult)
    got = attention.qk_norm_attention(qkv, q_mult, dtype)
    torch_path = attention.reference_qk_norm_attention(qkv, q_mult, dtype)
    assert got.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert float((got.double() - exact).abs().max()) <= float(
        (torch_path.double() - exact).abs().max()) + 4 * eps


def test_wrong_inputs_are_refused():
    qkv, q_mult = _qkv(1, 4, 2, 16, seed=13), _q_mult(2, seed=14)
    with pytest.raises(ValueError, match=r"\(R, n, 3, H, D\)"):
        attention.qk_norm_attention(qkv[:, :, :2], q_mult)
    with pytest.raises(ValueError, match="contiguous"):
        attention.qk_norm_attention(qkv.transpose(3, 4), q_mult)
    with pytest.raises(ValueError, match="q_mult"):
        attention.qk_norm_attention(qkv, q_mult.double())
    with pytest.raises(ValueError, match="q_mult"):
        attention.qk_norm_attention(qkv, q_mult[:1])
    with pytest.raises(ValueError, match="block_m"):
        attention.qk_norm_attention(qkv, q_mult, block_m=48)
    assert attention.qk_norm_attention(qkv[:, :0], q_mult).shape == (1, 0, 32)


# ---------------------------------------------------------------------------------- runner
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_runner_logits_equal_the_two_kernel_path(dtype):
    model = small_transformer("hmar", device=DEVICE)
    residual = torch.float32 if dtype != torch.float32 else None
    plain = FastRunner(model, dtype, cuda_graphs=False, residual_dtype=residual,
                       attention_kernel=False)
    fast = FastRunner(model, dtype, cuda_graphs=False, residual_dtype=residual,
                      attention_kernel=True)
    assert fast.attention_kernel and not plain.attention_kernel
    assert_runners_agree(model, plain, fast, dtype)


def test_runner_auto_is_off_on_cpu_and_for_var():
    assert not FastRunner(small_transformer("hmar", device="cpu"), torch.float32).attention_kernel
    var = FastRunner(small_transformer("var", device=DEVICE), torch.float32,
                     attention_kernel=True)
    assert not var.attention_kernel  # attention over a cache: SDPA


def test_a_kernel_that_disagrees_is_refused(monkeypatch):
    model = small_transformer("hmar", device=DEVICE)
    monkeypatch.setattr(attention, "qk_norm_attention",
                        lambda qkv, q_mult, dtype: attention.reference_qk_norm_attention(
                            qkv, q_mult, dtype) * 1.01)
    with pytest.raises(RuntimeError, match="disagrees"):
        FastRunner(model, torch.float32, cuda_graphs=False, attention_kernel=True)
    auto = FastRunner(model, torch.float32, cuda_graphs=False, attention_kernel=None)
    assert not auto.attention_kernel


# ------------------------------------------------------------------------- through the engine
def test_inpaint_through_the_engine_keeps_tokens_and_pixels():
    """The public call: the same edit with and without the kernel, float32 engine."""
    from PIL import Image

    from hmar_core import Pipeline

    pipe = Pipeline.random(seed=0, device=DEVICE)
    side = pipe.image_size
    gen = torch.Generator().manual_seed(4)
    picture = Image.fromarray((torch.rand(side, side, 3, generator=gen) * 255).byte().numpy())
    mask = Image.new("L", (side, side), 0)
    mask.paste(255, (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
    runs = [pipe.with_engine("fast", dtype=torch.float32, attention_kernel=flag,
                             compile_vae=False).edit(picture, mask, seed=3, steps=2)
            for flag in (True, False)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0].tokens, runs[1].tokens))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(runs[0].images, runs[1].images))


@pytest.mark.gpu
@pytest.mark.parametrize("rows, tokens", [(1, 256), (128, 169)])
def test_gpu_at_the_benchmark_sizes(rows, tokens):
    """d30's head layout (30 heads of 64) in fp16: a batch-1 edit's 16×16 pass and a B = 64
    CFG pass of the 13×13 scale, within the two-kernel path's error of float64."""
    qkv = _qkv(rows, tokens, 30, 64, seed=15, dtype=torch.float16)
    q_mult = _q_mult(30, seed=16)
    exact = _exact(qkv, q_mult)
    got = attention.qk_norm_attention(qkv, q_mult, torch.float16)
    torch_path = attention.reference_qk_norm_attention(qkv, q_mult, torch.float16)
    assert float((got.double() - exact).abs().max()) <= float(
        (torch_path.double() - exact).abs().max()) + 4 * torch.finfo(torch.float16).eps
