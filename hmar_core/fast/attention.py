"""HMAR's block attention of one pass as one Triton kernel: q/k norm, softmax(q·kᵀ)·v, output.

Origin: HMAR Studio (no upstream kernel); the loop is the usual online-softmax ("flash")
formulation. An HMAR pass attends within its own scale only (block-diagonal attention, no
cache), so a pass's attention is full attention over its ``n`` tokens, per row and head. The
fast runner's path for it was two kernels, :func:`~hmar_core.fast.fused.qk_normalize` (q and k
L2-normalised per head, q times its temperature, written out) and SDPA (reading them back).
Here every program takes ``BLOCK_M`` queries of one (row, head) straight from the qkv GEMM
output, normalises them in registers, and loops over the scale's keys in tiles of ``BLOCK_N``,
normalising each key tile as it loads it; the output is written as ``(R, n, H·D)``, the proj
GEMM's input. At batch 1 a pass is bound by launches and kernel latency (a d30 edit runs 25
passes of 30 blocks), so one kernel fewer per block is what this buys.

Same math as the two-kernel path: norms in float32 clamped at ``eps`` like
:func:`torch.nn.functional.normalize`, q and k rounded to the run dtype before their product
(as the written tensors were), scores and softmax statistics in float32, the probabilities
rounded to the run dtype before the product with v (as flash attention does), softmax scale 1
(the temperature is in q). Float32 inputs multiply in IEEE float32 (tests; no TF32).

Shape legend: R = rows (batch, both CFG halves), n = tokens of the scale, H = heads,
D = head dim, C = H·D.

Forward only, no autograd; CUDA-graph safe (no host synchronisation, ``torch.empty`` output).

Hardware tested: CPU interpreter (``TRITON_INTERPRET=1``) and one NVIDIA H200 (session 12,
torch 2.11, triton 3.6; bf16 included) by ``tests/test_fast_attention.py`` against a float64
reference and the two-kernel path; the public-API figures are in BENCHMARKS.md.
"""

# ruff: noqa: ANN001 (the @triton.jit kernel's arguments are typed by Triton, not annotated)
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton  # type: ignore[import-untyped]
import triton.language as tl  # type: ignore[import-untyped]

__all__ = ["INTERPRETED", "qk_norm_attention", "reference_qk_norm_attention"]

# Whether the kernel was decorated for Triton's CPU interpreter (read once, at import).
INTERPRETED = bool(triton.knobs.runtime.interpret)
_NORM_EPS = 1e-12  # F.normalize's eps
_MAX_HEAD_DIM = 256


@triton.jit
def _qk_norm_attention_kernel(
    qkv_ptr, q_mult_ptr, out_ptr,
    tokens, heads, stride_r, stride_n, eps,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, KEY_TILES: tl.constexpr, IEEE: tl.constexpr,
):
    block = tl.program_id(0)  # query tile
    row_head = tl.program_id(1)
    row = (row_head // heads).to(tl.int64)
    head = row_head % heads
    width = heads * HEAD_DIM
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims[None, :] < HEAD_DIM
    base = qkv_ptr + row * stride_r + head * HEAD_DIM + dims[None, :]  # q; k at +C, v at +2C
    run = out_ptr.dtype.element_ty

    # -- the query tile, normalised and scaled by the head's temperature, in the run dtype
    queries = block * BLOCK_M + tl.arange(0, BLOCK_M)
    q_ok = queries[:, None] < tokens
    q = tl.load(base + queries[:, None].to(tl.int64) * stride_n, mask=q_ok & dim_ok,
                other=0.0).to(tl.float32)
    q_norm = tl.maximum(tl.sqrt_rn(tl.sum(q * q, axis=1)), eps)  # (BLOCK_M,)
    q_mult = tl.load(q_mult_ptr + head + tl.zeros_like(queries))  # (BLOCK_M,), one value
    q = (q * tl.div_rn(q_mult, q_norm)[:, None]).to(run)

    # -- online softmax over the scale's keys
    best = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for tile in range(KEY_TILES):  # a constexpr bound (the interpreter's range needs one)
        keys = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        k_ok = keys[:, None] < tokens
        at = base + keys[:, None].to(tl.int64) * stride_n
        k = tl.load(at + width, mask=k_ok & dim_ok, other=0.0).to(tl.float32)
        k_norm = tl.maximum(tl.sqrt_rn(tl.sum(k * k, axis=1)), eps)
        k = (k * tl.div_rn(tl.zeros_like(k_norm) + 1.0, k_norm)[:, None]).to(run)
        v = tl.load(at + 2 * width, mask=k_ok & dim_ok, other=0.0).to(run)
        if IEEE:
            scores = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(k))
        scores = tl.where(keys[None, :] < tokens, scores, float("-inf"))  # (BLOCK_M, BLOCK_N)
        new_best = tl.maximum(best, tl.max(scores, axis=1))  # finite: every tile has a key
        p = tl.exp(scores - new_best[:, None])
        alpha = tl.exp(best - new_best)
        total = total * alpha + tl.sum(p, axis=1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(run), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(run), v)
        best = new_best

    out = acc / total[:, None]
    target = out_ptr + (row * tokens + queries[:, None]) * width + head * HEAD_DIM + dims[None, :]
    tl.store(target, out.to(run), mask=q_ok & dim_ok)


def _tile(tokens: int, largest: int) -> int:
    """A tile side: the tokens rounded up to a power of two, 16 to ``largest``."""
    return max(16, min(largest, triton.next_power_of_2(max(tokens, 1))))


def qk_norm_attention(
    qkv: torch.Tensor,
    q_mult: torch.Tensor,
    out_dtype: torch.dtype | None = None,
    *,
    block_m: int = 64,
    block_n: int = 64,
    max_grid_y: int = 65535,
) -> torch.Tensor:
    """Full attention of each row's ``n`` tokens with L2-normalised q and k, one kernel.

    Args:
        qkv: (R, n, 3, H, D) view of the qkv GEMM output; its (3, H, D) contiguous.
        q_mult: (H,) float32 per-head temperature of q.
        out_dtype: the run dtype (q, k, v and the probabilities are rounded to it, the output
            is written in it); default ``qkv``'s.
        block_m, block_n: largest query and key tiles (powers of two ≥ 16).
        max_grid_y: programs per launch on grid axis 1 (CUDA's limit; smaller in tests).

    Returns:
        (R, n, H·D) contiguous: ``softmax(q̂·k̂ᵀ)·v`` per head, heads side by side, with
        ``q̂ = q·q_mult/max(‖q‖, eps)`` and ``k̂ = k/max(‖k‖, eps)``.

    Raises:
        ValueError: wrong shapes, strides or dtypes, or a device Triton cannot run on.
    """
    if qkv.device.type != "cuda" and not (qkv.device.type == "cpu" and INTERPRETED):
        raise ValueError(f"qk_norm_attention runs on CUDA tensors (or on CPU with "
                         f"TRITON_INTERPRET=1), got {qkv.device}")
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be (R, n, 3, H, D), got {tuple(qkv.shape)}")
    rows, tokens, _, heads, head_dim = qkv.shape
    if not (qkv.dtype.is_floating_point and qkv.stride()[2:] == (heads * head_dim, head_dim, 1)):
        raise ValueError(f"qkv must be floating point with contiguous (3, H, D), got "
                         f"{qkv.dtype} strides {qkv.stride()}")
    if head_dim > _MAX_HEAD_DIM:
        raise ValueError(f"head dim {head_dim} exceeds the limit {_MAX_HEAD_DIM}")
    if q_mult.shape != (heads,) or q_mult.dtype != torch.float32 or not q_mult.is_contiguous():
        raise ValueError(f"q_mult must be contiguous float32 ({heads},), got "
                         f"{q_mult.dtype} {tuple(q_mult.shape)}")
    for name, side in (("block_m", block_m), ("block_n", block_n)):
        if side < 16 or side & (side - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {side}")
    out_dtype = qkv.dtype if out_dtype is None else out_dtype
    out = torch.empty((rows, tokens, heads * head_dim), dtype=out_dtype, device=qkv.device)
    if out.numel() == 0:
        return out
    tile_m, tile_n = _tile(tokens, block_m), _tile(tokens, block_n)
    block_d = max(16, triton.next_power_of_2(head_dim))
    # (row, head) pairs on grid axis 1, which allows 65535 programs: larger batches launch in
    # slices of rows (query tiles stay on axis 0, next to each other, sharing their keys in L2)
    per_launch = max(1, min(rows, max_grid_y // heads))
    for start in range(0, rows, per_launch):
        part = slice(start, min(rows, start + per_launch))
        grid = (triton.cdiv(tokens, tile_m), (part.stop - part.start) * heads)
        _qk_norm_attention_kernel[grid](
            qkv[part], q_mult, out[part],
            tokens, heads, qkv.stride(0), qkv.stride(1), _NORM_EPS,
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=tile_m, BLOCK_N=tile_n,
            KEY_TILES=triton.cdiv(tokens, tile_n),
            IEEE=out_dtype == torch.float32, num_warps=4 if tile_m * tile_n <= 4096 else 8,
        )
    return out


def reference_qk_norm_attention(qkv: torch.Tensor, q_mult: torch.Tensor,
                                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The same as :func:`qk_norm_attention` with torch ops (the runner's unfused path):
    normalise and round q and k, then SDPA with scale 1; (R, n, H·D)."""
    out_dtype = qkv.dtype if out_dtype is None else out_dtype
    rows, tokens, _, heads, head_dim = qkv.shape
    q, k, v = qkv.unbind(2)  # (R, n, H, D) each
    q = (q.float() * (q_mult.view(heads, 1) / torch.linalg.vector_norm(
        q.float(), dim=-1, keepdim=True).clamp_min(_NORM_EPS))).to(out_dtype)
    k = (k.float() / torch.linalg.vector_norm(
        k.float(), dim=-1, keepdim=True).clamp_min(_NORM_EPS)).to(out_dtype)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v.to(out_dtype)))  # (R, H, n, D)
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    return out.transpose(1, 2).reshape(rows, tokens, heads * head_dim)
