"""Fused Triton kernels for the fast block pass: residual + LayerNorm + AdaLN modulation, q/k norm.

Origin: HMAR Studio (no upstream kernel); the row-wise LayerNorm layout follows the pattern of
Triton's tutorial 05 (one program per row, the whole row in registers, statistics in float32).
What it replaces in :class:`~hmar_core.fast.runner.FastRunner` (same math, fewer passes over
memory and fewer launches; at batch 1 the pass is launch-bound):

* :func:`residual_ln_modulate`: ``x ← x + delta·gamma`` (float32 arithmetic, stored in ``x``'s
  dtype, in place) then ``h = LN(x)·(scale + 1) + shift`` written in the run dtype: three torch
  kernels (``addcmul``, ``layer_norm``, ``addcmul``) become one. Without ``delta`` it is the
  block's first ``LN + modulation`` (two kernels become one).
* :func:`qk_normalize`: q and k L2-normalised along the head dim (norms in float32, ``eps``
  as :func:`torch.nn.functional.normalize`'s clamp), q times its per-head temperature, read
  from the ``qkv`` GEMM output and written as two contiguous tensors (three kernels become one).
* FP8 GEMMs (``FastEngine(fp8=True)``, :mod:`hmar_core.fast.fp8`): :func:`residual_ln_modulate_fp8`
  (with or without the residual add) writes ``h`` straight as row-wise e4m3 with its per-token
  scales,
  and :func:`quantize_rows` quantises the attention output (and, with ``gelu``, applies fc1's
  tanh-GELU first): the inputs of the four block GEMMs without another pass over memory. Values
  are rounded to the e4m3 grid in float32 before the cast (ties to even), so the kernels agree
  bit for bit with the torch reference on GPUs and under the CPU interpreter alike.

Shape legend: R = rows of modulation (batch rows), n = tokens per row, C = width,
H = heads, D = head dim.

Limits: the width (and ``H·D``) must fit one program's registers (C ≤ 8192); the last dimension
of every tensor must be contiguous. Forward only (inference), no autograd. CUDA-graph safe: no
host synchronisation, outputs allocated with ``torch.empty``.

Hardware tested: CPU interpreter (``TRITON_INTERPRET=1``, torch 2.13, triton 3.6), by
``tests/test_fast_fused.py``; the H200 run is pending (see the benchmark).
"""

# ruff: noqa: ANN001 (the @triton.jit kernels' arguments are typed by Triton, not annotated)
from __future__ import annotations

import torch
import triton  # type: ignore[import-untyped]
import triton.language as tl  # type: ignore[import-untyped]

__all__ = ["INTERPRETED", "ln_modulate", "qk_normalize", "quantize_rows",
           "residual_ln_modulate", "residual_ln_modulate_fp8"]

# Whether the kernels were decorated for Triton's CPU interpreter (read once, at import).
INTERPRETED = bool(triton.knobs.runtime.interpret)
_MAX_WIDTH = 8192
_NORM_EPS = 1e-12  # F.normalize's eps


# --------------------------------------------------------------------------------- kernels
@triton.jit
def _residual_ln_modulate_kernel(
    # tensors: residual x (in/out), block output, modulation rows, normalised output
    x_ptr, delta_ptr, gamma_ptr, scale_ptr, shift_ptr, h_ptr,
    # per-token scales of h when QUANT (h is then e4m3, see hmar_core.fast.fp8)
    h_scale_ptr,
    # sizes and row strides (in elements) of the (R, C) modulation tensors
    total_rows, tokens, width, gamma_stride, scale_stride, shift_stride, eps,
    HAS_RESIDUAL: tl.constexpr, WRITE_X: tl.constexpr, QUANT: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # ROWS tokens per program (1 on GPUs; more under the interpreter, where it is faster)
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # (ROWS, 1)
    batch = row // tokens  # its modulation row
    cols = tl.arange(0, BLOCK_C)[None, :]  # (1, BLOCK_C)
    valid = (row < total_rows) & (cols < width)
    x = tl.load(x_ptr + row * width + cols, mask=valid, other=0.0).to(tl.float32)
    # -- residual add in float32, rounded to the residual dtype (what the next op reads)
    if HAS_RESIDUAL:
        delta = tl.load(delta_ptr + row * width + cols, mask=valid, other=0.0).to(tl.float32)
        gamma = tl.load(gamma_ptr + batch * gamma_stride + cols, mask=valid, other=0.0)
        x = (x + delta * gamma).to(x_ptr.dtype.element_ty)
        if WRITE_X:
            tl.store(x_ptr + row * width + cols, x, mask=valid)
        x = x.to(tl.float32)
    # -- LayerNorm statistics in float32 (biased variance, as F.layer_norm)
    mean = tl.sum(x, axis=1)[:, None] / width
    centred = tl.where(valid, x - mean, 0.0)
    variance = tl.sum(centred * centred, axis=1)[:, None] / width
    rstd = tl.div_rn(tl.zeros_like(variance) + 1.0, tl.sqrt_rn(variance + eps))  # (ROWS, 1)
    # -- modulation: LN(x)·(scale + 1) + shift (scale already holds the +1)
    scale = tl.load(scale_ptr + batch * scale_stride + cols, mask=valid, other=0.0)
    shift = tl.load(shift_ptr + batch * shift_stride + cols, mask=valid, other=0.0)
    h = centred * rstd * scale + shift
    if QUANT:
        _store_e4m3_rows(h_ptr, h_scale_ptr, h, row, cols, valid, row < total_rows, width)
    else:
        tl.store(h_ptr + row * width + cols, h.to(h_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _e4m3_grid(y):
    """``y`` (float32, |y| <= 448) rounded to nearest even on the e4m3fn grid, still float32:
    the cast to fp8 is then exact (Triton's CPU interpreter rounds some casts wrongly, the
    hardware does not; this makes both agree with torch's cast)."""
    bits = y.to(tl.int32, bitcast=True)
    # normal range: keep 3 of float32's 23 mantissa bits, ties to even
    lsb = (bits >> 20) & 1
    normal = ((bits + 0x7FFFF + lsb) & -1048576).to(tl.float32, bitcast=True)  # -2^20: ~0xFFFFF
    # subnormal range (|y| < 2^-6): multiples of 2^-9, by the float32 add-and-subtract trick
    magic = 24576.0  # 1.5 * 2^14: its float32 ulp is 2^-9 (on |y|, keeping the sign of -0)
    magnitude = ((tl.abs(y) + magic) - magic).to(tl.int32, bitcast=True)
    sub = (magnitude | (bits & -2147483648)).to(tl.float32, bitcast=True)  # y's sign bit
    return tl.where(tl.abs(y) < 0.015625, sub, normal)


@triton.jit
def _store_e4m3_rows(q_ptr, scale_ptr, values, row, cols, valid, row_valid, width):
    """Row-wise e4m3 quantisation of (ROWS, BLOCK) float32 ``values`` (as
    ``hmar_core.fast.fp8.quantize_rows``): ``q = values·448/a`` and ``scale = a/448`` with
    ``a = max(max|row|, 1e-12)``."""
    amax = tl.max(tl.where(valid, tl.abs(values), 0.0), axis=1)[:, None]  # (ROWS, 1)
    amax = tl.maximum(amax, 1e-12)
    inverse = tl.div_rn(tl.zeros_like(amax) + 448.0, amax)
    q = _e4m3_grid(values * inverse)
    tl.store(q_ptr + row * width + cols, q.to(q_ptr.dtype.element_ty), mask=valid)
    tl.store(scale_ptr + row, tl.div_rn(amax, tl.zeros_like(amax) + 448.0), mask=row_valid)


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, scale_ptr, total_rows, width,
    GELU: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # (ROWS, 1)
    cols = tl.arange(0, BLOCK_C)[None, :]
    valid = (row < total_rows) & (cols < width)
    x = tl.load(x_ptr + row * width + cols, mask=valid, other=0.0).to(tl.float32)
    if GELU:  # tanh-GELU, tanh(u) = 1 - 2 / (exp(2u) + 1)
        inner = tl.minimum(0.7978845608028654 * (x + 0.044715 * x * x * x), 40.0)  # tanh(40) = 1
        x = 0.5 * x * (2.0 - tl.div_rn(tl.zeros_like(x) + 2.0, tl.exp(2.0 * inner) + 1.0))
    _store_e4m3_rows(q_ptr, scale_ptr, x, row, cols, valid, row < total_rows, width)


@triton.jit
def _qk_normalize_kernel(
    # tensors: qkv GEMM output (rows, 3, H, D) with contiguous (H, D), q's temperature, outputs
    qkv_ptr, q_mult_ptr, q_ptr, k_ptr,
    # sizes
    total_rows, row_stride, heads, head_dim, eps,
    ROWS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # ROWS tokens (all their heads) per program
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None, None]
    head = tl.arange(0, BLOCK_H)[None, :, None]
    dim = tl.arange(0, BLOCK_D)[None, None, :]
    valid = (row < total_rows) & (head < heads) & (dim < head_dim)  # (ROWS, BLOCK_H, BLOCK_D)
    offsets = head * head_dim + dim
    width = heads * head_dim
    source = qkv_ptr + row * row_stride + offsets
    q = tl.load(source, mask=valid, other=0.0).to(tl.float32)
    k = tl.load(source + width, mask=valid, other=0.0).to(tl.float32)
    # -- per-head L2 norms in float32, clamped like F.normalize
    q_norm = tl.maximum(tl.sqrt_rn(tl.sum(q * q, axis=2)), eps)  # (ROWS, BLOCK_H)
    k_norm = tl.maximum(tl.sqrt_rn(tl.sum(k * k, axis=2)), eps)
    head_row = tl.arange(0, BLOCK_H)[None, :]
    q_mult = tl.load(q_mult_ptr + head_row, mask=head_row < heads, other=0.0)  # (1, BLOCK_H)
    # (div_rn neither broadcasts nor takes scalars: operands of one shape)
    q = q * tl.div_rn(q_mult + tl.zeros_like(q_norm), q_norm)[:, :, None]
    k = k * tl.div_rn(tl.zeros_like(k_norm) + 1.0, k_norm)[:, :, None]  # as 1 / norm
    tl.store(q_ptr + row * width + offsets, q.to(q_ptr.dtype.element_ty), mask=valid)
    tl.store(k_ptr + row * width + offsets, k.to(k_ptr.dtype.element_ty), mask=valid)


# -------------------------------------------------------------------------------- wrappers
def _warps(elements: int) -> int:
    """Warps per program: about 8 elements per thread, 1 to 16 warps."""
    return max(1, min(16, elements // 256))


def _rows_per_program(elements: int, rows_per_program: int | None) -> int:
    """Tokens per program: 1 on GPUs (one row per program, as tutorial 05); under the
    interpreter, as many as fit 16k elements (its cost is per program, not per element)."""
    if rows_per_program is not None:
        if rows_per_program < 1 or rows_per_program & (rows_per_program - 1):
            raise ValueError(f"rows_per_program must be a power of two, got {rows_per_program}")
        return rows_per_program
    return max(1, 16384 // elements) if INTERPRETED else 1


def _check_device(tensor: torch.Tensor) -> None:
    if tensor.device.type != "cuda" and not (tensor.device.type == "cpu" and INTERPRETED):
        raise ValueError(
            f"fused kernels run on CUDA tensors (or on CPU with TRITON_INTERPRET=1 set before "
            f"hmar_core.fast.fused is imported), got {tensor.device}")


def _check_modulation(name: str, tensor: torch.Tensor, rows: int, width: int) -> None:
    if tensor.shape != (rows, width) or tensor.stride(1) != 1 or tensor.dtype != torch.float32:
        raise ValueError(f"{name} must be float32 (R, C) = ({rows}, {width}) with a contiguous "
                         f"last dim, got {tensor.dtype} {tuple(tensor.shape)} {tensor.stride()}")


def residual_ln_modulate(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    gamma: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
    *,
    eps: float,
    out_dtype: torch.dtype,
    write_x: bool = True,
    rows_per_program: int | None = None,
) -> torch.Tensor:
    """``x += delta·gamma`` (in place) and ``h = LN(x)·scale + shift``, in one kernel.

    Args:
        x: (R, n, C) contiguous residual stream (any float dtype; arithmetic in float32). Updated
            in place when ``delta`` is given and ``write_x`` (callers pass an intermediate).
        delta: (R, n, C) contiguous block output, or ``None`` for LN + modulation only.
        gamma: (R, C) float32 residual gate (``None`` iff ``delta`` is ``None``).
        scale: (R, C) float32 modulation factor (the AdaLN ``scale + 1``).
        shift: (R, C) float32 modulation shift.
        eps: LayerNorm epsilon.
        out_dtype: dtype of ``h``.
        write_x: store the updated residual (``False`` after the last block: only ``h`` is read).
        rows_per_program: tokens per program, a power of two (default: 1 on GPUs).

    Returns:
        h: (R, n, C) in ``out_dtype``.
    """
    h, _ = _residual_ln(x, delta, gamma, scale, shift, eps, out_dtype, write_x,
                        rows_per_program)
    return h


def residual_ln_modulate_fp8(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    gamma: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
    *,
    eps: float,
    rows_per_program: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`residual_ln_modulate` whose ``h`` is written row-wise quantised to e4m3 (the
    input of an FP8 GEMM, :mod:`hmar_core.fast.fp8`), in the same kernel.

    Returns:
        q: (R·n, C) float8 e4m3fn; scales: (R·n, 1) float32 (``h ≈ q·scales``).
    """
    q, scales = _residual_ln(x, delta, gamma, scale, shift, eps, torch.float8_e4m3fn, True,
                             rows_per_program, quantize=True)
    assert scales is not None
    return q.view(-1, q.shape[-1]), scales


def _residual_ln(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    gamma: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype,
    write_x: bool,
    rows_per_program: int | None,
    quantize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The checks and launch of both ``residual_ln_modulate`` variants."""
    _check_device(x)
    if x.dim() != 3 or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous (R, n, C) tensor, got {tuple(x.shape)}")
    rows, tokens, width = x.shape
    if width > _MAX_WIDTH:
        raise ValueError(f"width {width} exceeds the fused kernel's limit {_MAX_WIDTH}")
    if (delta is None) != (gamma is None):
        raise ValueError("delta and gamma are given together or not at all")
    if delta is not None and gamma is not None:
        if delta.shape != x.shape or not delta.is_contiguous() or delta.device != x.device:
            raise ValueError(f"delta must be contiguous {tuple(x.shape)} on {x.device}, got "
                             f"{tuple(delta.shape)} on {delta.device}")
        _check_modulation("gamma", gamma, rows, width)
    _check_modulation("scale", scale, rows, width)
    _check_modulation("shift", shift, rows, width)
    h = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    h_scale = (torch.empty((rows * tokens, 1), dtype=torch.float32, device=x.device)
               if quantize else None)
    if h.numel() == 0:
        return h, h_scale
    block = triton.next_power_of_2(width)
    has_residual = delta is not None and gamma is not None
    gamma_stride = gamma.stride(0) if gamma is not None else 0
    per_program = _rows_per_program(block, rows_per_program)
    total = rows * tokens
    _residual_ln_modulate_kernel[(triton.cdiv(total, per_program),)](
        x, delta if has_residual else x, gamma if has_residual else scale, scale, shift, h,
        h_scale if h_scale is not None else scale,
        total, tokens, width, gamma_stride, scale.stride(0),
        shift.stride(0), eps,
        HAS_RESIDUAL=has_residual, WRITE_X=write_x, QUANT=quantize, ROWS=per_program,
        BLOCK_C=block,
        num_warps=_warps(block * per_program),
    )
    return h, h_scale


def ln_modulate(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *, eps: float,
    out_dtype: torch.dtype, rows_per_program: int | None = None,
) -> torch.Tensor:
    """``LN(x)·scale + shift`` in one kernel: :func:`residual_ln_modulate` without the add."""
    return residual_ln_modulate(x, None, None, scale, shift, eps=eps, out_dtype=out_dtype,
                                rows_per_program=rows_per_program)


def quantize_rows(
    x: torch.Tensor, *, gelu: bool = False, rows_per_program: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise e4m3 quantisation of a contiguous (..., K) tensor in one kernel, optionally of
    its tanh-GELU: :func:`hmar_core.fast.fp8.quantize_rows` (of ``gelu_tanh(x)``).

    Returns:
        q: (M, K) float8 e4m3fn; scales: (M, 1) float32.
    """
    _check_device(x)
    if not x.is_contiguous() or x.dim() < 1:
        raise ValueError(f"x must be contiguous with a last dim, got {tuple(x.shape)}")
    width = x.shape[-1]
    if width > _MAX_WIDTH:
        raise ValueError(f"width {width} exceeds the fused kernel's limit {_MAX_WIDTH}")
    total = x.numel() // max(width, 1)
    q = torch.empty((total, width), dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty((total, 1), dtype=torch.float32, device=x.device)
    if q.numel() == 0:
        return q, scales
    block = triton.next_power_of_2(width)
    per_program = _rows_per_program(block, rows_per_program)
    _quantize_rows_kernel[(triton.cdiv(total, per_program),)](
        x, q, scales, total, width, GELU=gelu, ROWS=per_program, BLOCK_C=block,
        num_warps=_warps(block * per_program),
    )
    return q, scales


def qk_normalize(
    qkv: torch.Tensor,
    q_mult: torch.Tensor,
    out_dtype: torch.dtype | None = None,
    rows_per_program: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q·q_mult / max(‖q‖, eps)`` and ``k / max(‖k‖, eps)`` per head, norms in float32.

    Args:
        qkv: (R, n, 3, H, D) view of the qkv GEMM output; (3, H, D) contiguous, and the (R, n)
            rows at one stride (true for any contiguous (R, n, 3C) tensor viewed so).
        q_mult: (H,) float32 per-head temperature of q.
        out_dtype: dtype of q and k; default ``qkv``'s.
        rows_per_program: tokens per program, a power of two (default: 1 on GPUs).

    Returns:
        q, k: (R, n, H, D) contiguous each.
    """
    _check_device(qkv)
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be (R, n, 3, H, D), got {tuple(qkv.shape)}")
    rows, tokens, _, heads, head_dim = qkv.shape
    if qkv[..., 0, 0, 0].numel() > 0:
        inner = (heads * head_dim, head_dim, 1)
        if qkv.stride()[2:] != inner or qkv.stride(0) != tokens * qkv.stride(1):
            raise ValueError(f"qkv's (3, H, D) must be contiguous and its rows evenly strided, "
                             f"got strides {qkv.stride()}")
    if heads * head_dim > _MAX_WIDTH:
        raise ValueError(f"H·D = {heads * head_dim} exceeds the limit {_MAX_WIDTH}")
    if q_mult.shape != (heads,) or q_mult.dtype != torch.float32 or not q_mult.is_contiguous():
        raise ValueError(f"q_mult must be contiguous float32 ({heads},), got "
                         f"{q_mult.dtype} {tuple(q_mult.shape)}")
    out_dtype = qkv.dtype if out_dtype is None else out_dtype
    shape = (rows, tokens, heads, head_dim)
    q = torch.empty(shape, dtype=out_dtype, device=qkv.device)
    k = torch.empty(shape, dtype=out_dtype, device=qkv.device)
    if q.numel() == 0:
        return q, k
    block_h, block_d = triton.next_power_of_2(heads), triton.next_power_of_2(head_dim)
    per_program = _rows_per_program(block_h * block_d, rows_per_program)
    total = rows * tokens
    _qk_normalize_kernel[(triton.cdiv(total, per_program),)](
        qkv, q_mult, q, k,
        total, qkv.stride(1), heads, head_dim, _NORM_EPS,
        ROWS=per_program, BLOCK_H=block_h, BLOCK_D=block_d,
        num_warps=_warps(block_h * block_d * per_program),
    )
    return q, k
