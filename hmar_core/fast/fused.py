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

__all__ = ["INTERPRETED", "ln_modulate", "qk_normalize", "residual_ln_modulate"]

# Whether the kernels were decorated for Triton's CPU interpreter (read once, at import).
INTERPRETED = bool(triton.knobs.runtime.interpret)
_MAX_WIDTH = 8192
_NORM_EPS = 1e-12  # F.normalize's eps


# --------------------------------------------------------------------------------- kernels
@triton.jit
def _residual_ln_modulate_kernel(
    # tensors: residual x (in/out), block output, modulation rows, normalised output
    x_ptr, delta_ptr, gamma_ptr, scale_ptr, shift_ptr, h_ptr,
    # sizes and row strides (in elements) of the (R, C) modulation tensors
    total_rows, tokens, width, gamma_stride, scale_stride, shift_stride, eps,
    HAS_RESIDUAL: tl.constexpr, WRITE_X: tl.constexpr,
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
    tl.store(h_ptr + row * width + cols, h.to(h_ptr.dtype.element_ty), mask=valid)


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
    if h.numel() == 0:
        return h
    block = triton.next_power_of_2(width)
    has_residual = delta is not None and gamma is not None
    gamma_stride = gamma.stride(0) if gamma is not None else 0
    per_program = _rows_per_program(block, rows_per_program)
    total = rows * tokens
    _residual_ln_modulate_kernel[(triton.cdiv(total, per_program),)](
        x, delta if has_residual else x, gamma if has_residual else scale, scale, shift, h,
        total, tokens, width, gamma_stride, scale.stride(0),
        shift.stride(0), eps,
        HAS_RESIDUAL=has_residual, WRITE_X=write_x, ROWS=per_program, BLOCK_C=block,
        num_warps=_warps(block * per_program),
    )
    return h


def ln_modulate(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *, eps: float,
    out_dtype: torch.dtype, rows_per_program: int | None = None,
) -> torch.Tensor:
    """``LN(x)·scale + shift`` in one kernel: :func:`residual_ln_modulate` without the add."""
    return residual_ln_modulate(x, None, None, scale, shift, eps=eps, out_dtype=out_dtype,
                                rows_per_program=rows_per_program)


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
