"""The fused Triton kernels of the fast path against the torch ops they replace.

Without a GPU the kernels run through Triton's CPU interpreter: ``TRITON_INTERPRET`` is set
before :mod:`hmar_core.fast.fused` is imported (and the module reloaded if something imported it
earlier without it), as ``tests/kernels/conftest.py`` does for the attention kernels. With a GPU
the same tests run the compiled kernels.

Tolerances follow flash-attn's rule: the kernel's error against a float64 reference is at most
twice the error of the torch ops it replaces, computed in the same dtypes (plus a float32 ulp).
The runner test checks that the logits with the fused kernels equal those without.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from small_transformer import assert_runners_agree, small_transformer
from triton_modules import require_kernels

from hmar_core.fast import FastRunner
from hmar_core.transformer import HMARTransformer

fused = require_kernels("hmar_core.fast.fused")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
EPS = 1e-6


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(DEVICE, dtype)


def _assert_within(got: torch.Tensor, same_dtype: torch.Tensor, exact: torch.Tensor) -> None:
    """Error of ``got`` vs the float64 ``exact`` ≤ 2× that of the torch ops (+ a float32 ulp)."""
    assert got.dtype == same_dtype.dtype and got.shape == exact.shape
    kernel_error = float((got.double() - exact).abs().max())
    torch_error = float((same_dtype.double() - exact).abs().max())
    slack = torch.finfo(torch.float32).eps * float(exact.abs().max())
    assert kernel_error <= 2 * torch_error + slack, (kernel_error, torch_error)


# ---------------------------------------------------------------- residual + LN + modulation
CASES = [  # (residual dtype, run dtype)
    (torch.float32, torch.float32), (torch.float32, torch.float16), (torch.float16, torch.float16)]


@pytest.mark.parametrize("residual_dtype, run_dtype", CASES)
@pytest.mark.parametrize("rows, tokens, width", [(2, 7, 37), (3, 1, 48), (1, 5, 130)])
@pytest.mark.parametrize("rows_per_program", [None, 1])
def test_residual_ln_modulate(residual_dtype, run_dtype, rows, tokens, width, rows_per_program):
    x = _randn(rows, tokens, width, seed=0, dtype=residual_dtype) * 3 + 1
    delta = _randn(rows, tokens, width, seed=1, dtype=run_dtype)
    ada = _randn(rows, 6, width, seed=2)  # strided (R, C) views, as the runner passes them
    gamma, scale, shift = ada[:, 0], ada[:, 3] + 1, ada[:, 5]
    # the runner's torch ops: addcmul in float32 stored in the residual dtype, LN, addcmul
    new_x = torch.addcmul(x.float(), delta.float(), gamma[:, None]).to(residual_dtype)
    normed = F.layer_norm(new_x, (width,), eps=EPS)
    torch_h = torch.addcmul(shift[:, None], normed, scale[:, None]).to(run_dtype)
    exact_x = x.double() + delta.double() * gamma.double()[:, None]
    exact_h = F.layer_norm(new_x.double(), (width,), eps=EPS) * scale.double()[:, None] \
        + shift.double()[:, None]

    inplace = x.clone()
    h = fused.residual_ln_modulate(inplace, delta, gamma, scale, shift, eps=EPS,
                                   out_dtype=run_dtype, rows_per_program=rows_per_program)
    _assert_within(inplace, new_x, exact_x)
    _assert_within(h, torch_h, exact_h)

    # the last block's form: float32 output for the head, residual left as it was
    kept = x.clone()
    h32 = fused.residual_ln_modulate(kept, delta, gamma, scale, shift, eps=EPS,
                                     out_dtype=torch.float32, write_x=False,
                                     rows_per_program=rows_per_program)
    assert torch.equal(kept, x)
    _assert_within(h32, torch.addcmul(shift[:, None], normed.float(), scale[:, None]), exact_h)

    # without the residual add: the block's first LN + modulation
    h0 = fused.ln_modulate(x, scale, shift, eps=EPS, out_dtype=run_dtype,
                           rows_per_program=rows_per_program)
    normed0 = F.layer_norm(x, (width,), eps=EPS)
    exact0 = F.layer_norm(x.double(), (width,), eps=EPS) * scale.double()[:, None] \
        + shift.double()[:, None]
    _assert_within(h0, torch.addcmul(shift[:, None], normed0, scale[:, None]).to(run_dtype),
                   exact0)


def test_residual_ln_modulate_validates():
    x, mod = _randn(2, 3, 16, seed=0), _randn(2, 16, seed=1)
    with pytest.raises(ValueError, match="contiguous"):
        fused.ln_modulate(x.transpose(0, 1), mod, mod, eps=EPS, out_dtype=torch.float32)
    with pytest.raises(ValueError, match="scale"):
        fused.ln_modulate(x, mod[:1], mod, eps=EPS, out_dtype=torch.float32)
    with pytest.raises(ValueError, match="gamma"):
        fused.residual_ln_modulate(x, x, mod.half(), mod, mod, eps=EPS, out_dtype=torch.float32)
    with pytest.raises(ValueError, match="together"):
        fused.residual_ln_modulate(x, x, None, mod, mod, eps=EPS, out_dtype=torch.float32)
    with pytest.raises(ValueError, match="power of two"):
        fused.ln_modulate(x, mod, mod, eps=EPS, out_dtype=torch.float32, rows_per_program=3)


# -------------------------------------------------------------------------------- q/k norm
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows, tokens, heads, head_dim", [(2, 7, 3, 16), (1, 5, 5, 20)])
@pytest.mark.parametrize("rows_per_program", [None, 1])
def test_qk_normalize(dtype, rows, tokens, heads, head_dim, rows_per_program):
    width = heads * head_dim
    qkv = _randn(rows, tokens, 3 * width, seed=3, dtype=dtype)  # the GEMM output
    qkv[0, 0, :head_dim] = 0  # a zero vector: F.normalize's clamp gives zeros
    qkv = qkv.view(rows, tokens, 3, heads, head_dim)
    q_mult = _randn(heads, seed=4).abs() + 0.5
    q, k = fused.qk_normalize(qkv, q_mult, rows_per_program=rows_per_program)
    assert q.is_contiguous() and k.is_contiguous()
    # the runner's torch ops: float32 norms, one float32 factor, stored in the run dtype
    qk = qkv[:, :, :2]
    mult = torch.stack([q_mult, torch.ones_like(q_mult)]).view(1, 1, 2, heads, 1)
    factor = mult / torch.linalg.vector_norm(
        qk, dim=-1, keepdim=True, dtype=torch.float32).clamp_min(1e-12)
    torch_q, torch_k = (qk * factor).to(dtype).unbind(2)
    exact_q = F.normalize(qkv[:, :, 0].double(), dim=-1) * q_mult.double()[:, None]
    exact_k = F.normalize(qkv[:, :, 1].double(), dim=-1)
    _assert_within(q, torch_q, exact_q)
    _assert_within(k, torch_k, exact_k)
    assert not q[0, 0, 0].any() and not k.isnan().any()


def test_qk_normalize_validates():
    qkv = _randn(2, 3, 3 * 32, seed=0).view(2, 3, 3, 2, 16)
    with pytest.raises(ValueError, match="q_mult"):
        fused.qk_normalize(qkv, torch.ones(3, device=DEVICE))
    with pytest.raises(ValueError, match="contiguous"):
        fused.qk_normalize(qkv.transpose(3, 4), torch.ones(2, device=DEVICE))


# ---------------------------------------------------------------------------------- runner
def _model(kind: str) -> HMARTransformer:
    return small_transformer(kind, device=DEVICE)


@pytest.mark.parametrize("kind", ["hmar", "var"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_runner_fused_logits_equal_unfused(kind, dtype):
    model = _model(kind)
    residual = torch.float32 if dtype != torch.float32 else None  # the fast engine's setting
    plain = FastRunner(model, dtype, cuda_graphs=False, residual_dtype=residual, fused=False)
    fast = FastRunner(model, dtype, cuda_graphs=False, residual_dtype=residual, fused=True)
    assert fast.fused and not plain.fused
    assert_runners_agree(model, plain, fast, dtype)


def test_runner_auto_is_off_on_cpu():
    runner = FastRunner(_model("hmar").cpu(), torch.float32)
    assert not runner.fused  # auto: CUDA devices only
