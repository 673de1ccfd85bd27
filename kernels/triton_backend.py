"""Block-sparse attention over token pyramids in Triton: forward and backward.

Shape legend: B = batch, H = heads, L = tokens, D = head dimension, BH = B·H.

Origin: the flash-attention algorithm as taught by Triton's tutorial 06 (fused attention):
online softmax in base 2 (scores scaled by ``scale·log2(e)``, ``exp2``, the log-sum-exp kept
per row for the backward), fp32 accumulators, a backward with a ``delta = rowsum(O ⊙ dO)``
term, one kernel for dK/dV that walks over query tiles and one for dQ that walks over key tiles.
Written from the algorithm for this project, no code copied.

What changed:

* Masks are :class:`~kernels.mask.ScaleMask` row ranges: row ``i`` sees keys
  ``[row_start[i], row_end[i])`` (block-diagonal or block-causal over the scales).
* Work is a precomputed *tile schedule* (:mod:`kernels.schedule`): row tiles never straddle a
  scale (small whole scales are packed together), and each program visits exactly the key (or
  query) range its rows need. The first tiles of that range, which every row sees whole, run
  without a mask; only boundary tiles are masked. No tile outside the pattern is ever loaded.
* Block-causal dK/dV uses uniform key tiles across scale boundaries; such a tile's first
  query tiles (the queries of its earlier scales) are masked, the middle ones are not.
* One 1-D grid of (item, batch·head) programs, items fastest so that the programs of one head
  share its K/V in L2, and the longest items first.
* Forward interior tiles take the row maximum of the raw scores and fold the softmax scale
  into the exponent's multiply-add (one multiply per score fewer than scaling first); boundary
  tiles scale, mask, then take the maximum.
* The dQ kernel also computes ``delta`` for its rows, so the backward is two launches.
* Host side: a launch plan per (mask, device, B·H, D, dtype, scale) holds the device tables,
  scalars and argument tuples; after its first launch each kernel keeps the tuned grid and
  config (no autotuner per call), and after its second the compiled kernel's own launcher (no
  JIT argument binding per call; half the host time of a fwd+bwd call on the H200).
  Without autograd (``no_grad`` or no input requiring grad) the forward skips the
  ``autograd.Function``.
* fp16, bf16 and fp32 inputs (fp32 uses IEEE dot products, for the CPU interpreter tests).
* Tile sizes, warps and pipeline depth are tuned by ``triton.autotune`` per (L, D, pyramid,
  pattern, power-of-two class of B·H, dtype), with the result cached in-process and on disk
  (Triton's cache directory); no environment variable is needed. Candidates that do not fit
  the GPU's shared memory (estimated) are pruned before tuning, and a candidate that fails to
  compile is skipped (timed as infinitely slow) rather than failing the call. Some candidates
  cap the registers per thread (``maxnreg``) so that more programs share an SM; their register
  counts were checked by compiling for sm_90 on the CPU (``tests/kernels/test_hopper_registers``).
  Under ``TRITON_INTERPRET=1`` one small fixed config per kernel is used instead.

Limits: D ∈ {64, 128}; q, k, v contiguous (B, H, L, D) of one dtype on one CUDA device (or CPU
under the interpreter); no dropout, no extra bias; every row must see at least one key (true
for both patterns). The Triton interpreter mis-computes bf16 dot products, so bf16 is only
correct on the GPU.

Hardware tested: NVIDIA H200 (torch 2.11, triton 3.6); CPU interpreter (torch 2.13, triton 3.6).
"""

# Triton convention in the kernels below: UPPERCASE tensor and constexpr arguments, untyped.
# ruff: noqa: N803, ANN001

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import os
import zlib
from collections.abc import Callable

import torch
import triton
import triton.language as tl
import triton.testing

from .mask import ScaleMask
from .schedule import SCHEDULE_BLOCKS, PackedSchedule, packed_schedule
from .validation import check_attention_inputs

__all__ = [
    "BlockSparseAttention", "check_triton_inputs", "is_available", "run_checked",
    "triton_attention",
]

logger = logging.getLogger(__name__)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_HEAD_DIMS = (64, 128)
_LOG2_E = 1.4426950408889634
# int arguments that change with the mask or shape; not specialised, so no recompilation
_RUNTIME_INTS = [
    "seq_len", "tune_key", "offset_16", "offset_32", "offset_64", "offset_128",
    "count_16", "count_32", "count_64", "count_128",
]
_BUILT_FOR_INTERPRETER = bool(triton.knobs.runtime.interpret)


def _interpreted() -> bool:
    """Whether this module's kernels were built for the Triton interpreter (at import)."""
    return _BUILT_FOR_INTERPRETER


def is_available() -> bool:
    """Triton is importable and there is a CUDA device or ``TRITON_INTERPRET=1``."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"


# --------------------------------------------------------------------------------------------
# Autotune configs: (row tile of the program, column tile of its loop, warps, stages), and
# optionally a fifth entry, the register cap per thread (``maxnreg``).
# --------------------------------------------------------------------------------------------

ConfigEntry = tuple[int, ...]  # (rows, cols, warps, stages) or (rows, cols, warps, stages, maxnreg)


def _configs(rows: str, cols: str, table: list[ConfigEntry]) -> list[triton.Config]:
    return [
        triton.Config({rows: r, cols: c}, num_warps=w, num_stages=s,
                      maxnreg=registers[0] if registers else None)
        for r, c, w, s, *registers in table
    ]


def _config_entry(config: triton.Config, rows: str, cols: str) -> ConfigEntry:
    """The table entry that :func:`_configs` built ``config`` from."""
    entry = (config.kwargs[rows], config.kwargs[cols], config.num_warps, config.num_stages)
    return entry if config.maxnreg is None else (*entry, config.maxnreg)


# Candidates per head dim, chosen for Hopper (H200: 227 KiB of shared memory per block): row
# tiles 64/128, column tiles 32/64/128, 4 or 8 warps, 2-5 pipeline stages. Configs whose
# estimated shared memory (:func:`_shared_memory`) exceeds the device's are pruned before
# tuning; one that still does not fit is timed as infinite by the autotuner. About 15 configs per
# kernel at D = 64 keep the first call's tuning to a few seconds per shape.
#
# Register caps (fifth entry): uncapped, ptxas gives the forward's 128x64 tile with 8 warps
# 142 registers per thread (sm_90, triton 3.6) and its 64x64 tile with 4 warps 133, so only one
# (three) programs fit an SM's 64 K registers; capped at 128 they take 125-128 without spilling
# and two (four) fit, so that one program's softmax overlaps another's matrix products (within
# a program, each dot waits for the one before). Tighter caps trade a few spills outside or
# once per tile for one more program per SM: 64x64 forward at 104 (five), 64x32 dQ at 96
# (five). The backward's caps are extra candidates only (dK/dV at 128 spills in its loop).
_FWD_CONFIGS = {
    64: [(128, 64, 4, 3), (128, 64, 4, 4), (128, 64, 8, 2, 128), (128, 64, 8, 3),
         (128, 64, 8, 3, 128), (128, 64, 8, 4, 128), (128, 128, 8, 2), (128, 128, 8, 3),
         (128, 128, 8, 4), (128, 32, 4, 4), (64, 64, 4, 2, 128), (64, 64, 4, 3, 128),
         (64, 64, 4, 4, 128), (64, 64, 4, 2, 104), (64, 128, 4, 3), (64, 128, 4, 4),
         (64, 32, 4, 5)],
    128: [(128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 3), (128, 32, 4, 4), (128, 128, 8, 2),
          (64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 4)],
}
# dQ: (query rows per program, key columns per step, warps, stages)
_DQ_CONFIGS = {
    64: [(128, 32, 4, 3), (128, 32, 4, 4), (128, 32, 4, 5), (128, 32, 8, 3), (128, 64, 4, 3),
         (128, 64, 8, 2), (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (64, 64, 4, 2),
         (64, 64, 4, 3), (64, 64, 4, 4), (64, 32, 4, 2), (64, 32, 4, 3), (64, 32, 4, 4),
         (64, 128, 4, 3), (64, 64, 4, 2, 128), (64, 32, 4, 3, 96)],
    128: [(128, 32, 8, 2), (128, 32, 8, 3), (128, 32, 4, 3), (128, 64, 8, 2), (64, 32, 4, 3),
          (64, 64, 4, 2), (64, 64, 4, 3)],
}
# dK/dV: (key rows per program, query columns per step, warps, stages)
_DKDV_CONFIGS = {
    64: [(128, 32, 4, 3), (128, 32, 4, 4), (128, 32, 4, 5), (128, 32, 8, 2), (128, 32, 8, 3),
         (128, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2),
         (64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 4, 4), (64, 32, 4, 2), (64, 32, 4, 3),
         (64, 32, 4, 4), (64, 128, 4, 3), (64, 32, 4, 3, 128)],
    128: [(128, 32, 8, 2), (128, 32, 8, 3), (128, 32, 4, 3), (128, 64, 8, 2), (64, 32, 4, 3),
          (64, 32, 4, 4), (64, 64, 4, 2), (64, 64, 4, 3)],
}
# One config per kernel under the interpreter: small tiles, so that small test pyramids still
# have several items, full tiles and boundary tiles.
_INTERPRETER_CONFIG = (32, 16, 4, 1)


def _tuning_bench(kernel_call: Callable[[], None], quantiles: tuple[float, ...]) -> list[float]:
    """Shorter timing than Triton's default (25 ms warm-up, 100 ms of runs): these kernels
    take 0.05-10 ms, and a first call should not spend seconds tuning.

    A candidate whose compilation fails (any compiler error, not only the resource errors that
    ``triton.autotune`` itself forgives) is timed as infinitely slow, so the tuner picks
    another instead of failing the call; if every candidate fails, the call raises.
    """
    try:
        return triton.testing.do_bench(kernel_call, warmup=10, rep=40, quantiles=quantiles)
    except Exception as error:  # noqa: BLE001 - any failed candidate must lose, not crash
        logger.debug("autotuning candidate failed, skipped: %s", error)
        return [float("inf")] * len(quantiles)


@functools.cache
def _device_shared_memory(device_index: int) -> int:
    """Shared memory per block (bytes) that kernels on this GPU may use."""
    properties = triton.runtime.driver.active.utils.get_device_properties(device_index)
    return int(properties["max_shared_mem"])


def _shared_memory(
    kernel: str, rows: int, cols: int, head_dim: int, stages: int, element_size: int
) -> int:
    """Estimated shared memory (bytes) of one program: the tiles its loop streams, once per
    pipeline stage, plus the tiles it keeps for the whole loop."""
    tile = head_dim * element_size
    if kernel == "dkdv":  # streams q, dO (cols × D) and lse, delta; keeps k, v (rows × D)
        return stages * cols * (2 * tile + 8) + 2 * rows * tile
    kept = 1 if kernel == "fwd" else 2  # q; or q and dO
    return stages * 2 * cols * tile + kept * rows * tile  # streams k, v (cols × D)


def _fitting_configs(
    kernel: str,
    rows: str,
    cols: str,
    table: dict[int, list[ConfigEntry]],
    configs: list[triton.Config],
    head_dim: int,
    element_size: int,
    limit: int,
) -> list[triton.Config]:
    """The configs of ``table[head_dim]`` whose shared memory fits in ``limit`` bytes; if none
    does, the smallest one (the autotuner needs at least one)."""
    wanted = set(table.get(head_dim, []))

    def size(c: triton.Config) -> int:
        return _shared_memory(kernel, c.kwargs[rows], c.kwargs[cols], head_dim, c.num_stages,
                              element_size)

    ours = [c for c in configs if _config_entry(c, rows, cols) in wanted]
    kept = [c for c in ours if size(c) <= limit]
    return kept or [min(ours or configs, key=size)]


def _autotune(
    kernel: str, rows: str, cols: str, table: dict[int, list[ConfigEntry]]
) -> Callable[[triton.JITFunction], triton.runtime.Autotuner]:
    """``triton.autotune`` keyed on (L, D, pyramid and pattern, dtypes), cached on disk.

    All head dims' configs are listed; a prune step keeps those of the call's head dim that fit
    in the current GPU's shared memory (by :func:`_shared_memory`).
    """
    if _BUILT_FOR_INTERPRETER:
        return triton.autotune(configs=_configs(rows, cols, [_INTERPRETER_CONFIG]), key=[])
    distinct = sorted({config for configs in table.values() for config in configs})

    def prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list:
        query = named_args.get("Q")
        element_size = query.element_size() if isinstance(query, torch.Tensor) else 2
        limit = _device_shared_memory(torch.cuda.current_device())
        return _fitting_configs(kernel, rows, cols, table, configs, int(kwargs["HEAD_DIM"]),
                                element_size, limit)

    return triton.autotune(
        configs=_configs(rows, cols, distinct),
        key=["seq_len", "HEAD_DIM", "tune_key"],
        prune_configs_by={"early_config_prune": prune},
        do_bench=_tuning_bench,
        cache_results=True,
    )


# --------------------------------------------------------------------------------------------
# Kernels. Each program owns one schedule item of one batch·head; its loop visits the item's
# column tiles in phases: the tiles every row sees whole run without a mask, the boundary
# tiles after them (and, for dK/dV of block-causal key tiles, before them) with a per-row
# mask. The per-tile work sits in small inlined helpers so that the loop driver can be a
# ``for`` (compiled: software-pipelined) or a ``while`` (interpreter: its ``range`` cannot
# take tensor bounds under NumPy >= 2.4).
# --------------------------------------------------------------------------------------------

@triton.jit
def _load_item(
    SCHEDULE, offset_16, offset_32, offset_64, offset_128, count_16, count_32, count_64,
    count_128, BLOCK: tl.constexpr,
):
    """This program's batch·head and item fields, from the packed schedule of row tile BLOCK
    (offsets and counts per tile size come as scalar arguments, so no dependent load)."""
    if BLOCK == 16:
        offset = offset_16
        n_items = count_16
    elif BLOCK == 32:
        offset = offset_32
        n_items = count_32
    elif BLOCK == 64:
        offset = offset_64
        n_items = count_64
    else:
        offset = offset_128
        n_items = count_128
    pid = tl.program_id(0)
    bh = pid // n_items
    entry = SCHEDULE + offset + (pid % n_items) * 6  # schedule.ITEM_FIELDS
    row_start = tl.load(entry)
    row_end = tl.load(entry + 1)
    col_start = tl.load(entry + 2)
    col_end = tl.load(entry + 3)
    col_full_start = tl.load(entry + 4)
    col_full_end = tl.load(entry + 5)
    return bh.to(tl.int64), row_start, row_end, col_start, col_end, col_full_start, col_full_end


@triton.jit
def _fwd_tile(
    acc, l_i, m_i, q,
    # this key tile: pointers (BLOCK_N, D), key indices (BLOCK_N,), end of the item's keys
    K_TILE, V_TILE, cols, k_end,
    # each query row's allowed key range (BLOCK_M,), and scale·log2(e)
    allowed_lo, allowed_hi, qk_scale,
    MASKED: tl.constexpr, NEGATIVE_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One online-softmax step over one key tile; returns the new (acc, l_i, m_i)."""
    if MASKED:
        col_valid = cols < k_end
        k = tl.load(K_TILE, mask=col_valid[:, None], other=0.0)
        v = tl.load(V_TILE, mask=col_valid[:, None], other=0.0)
    else:
        k = tl.load(K_TILE)
        v = tl.load(V_TILE)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if MASKED:
        scores = qk * qk_scale
        allowed = (cols[None, :] >= allowed_lo[:, None]) & (cols[None, :] < allowed_hi[:, None])
        scores = tl.where(allowed, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet
        p = tl.exp2(scores - m_ref[:, None])
    else:
        # Interior tile, every score finite: the row maximum of the scaled scores is the
        # scaled row maximum (minimum, for a negative scale; rounding is monotonic, so this is
        # exact), and the scale folds into one multiply-add per score.
        if NEGATIVE_SCALE:
            m_new = tl.maximum(m_i, tl.min(qk, 1) * qk_scale)
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_ref = m_new
        p = tl.exp2(qk * qk_scale - m_ref[:, None])
    alpha = tl.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@_autotune("fwd", "BLOCK_M", "BLOCK_N", _FWD_CONFIGS)
@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_fwd(
    # inputs (BH, L, D); outputs OUT (BH, L, D) and LSE (BH, L), the base-2 log-sum-exp, fp32
    Q, K, V, OUT, LSE,
    # mask: each row's allowed key range (L,) int32; the packed query schedule, and the offset
    # and item count of each row-tile size in it
    ROW_START, ROW_END, SCHEDULE, offset_16, offset_32, offset_64, offset_128,
    count_16, count_32, count_64, count_128,
    # sizes and scalars
    seq_len, qk_scale, tune_key,
    # meta-parameters (NEGATIVE_SCALE: qk_scale < 0, so row maxima come from row minima)
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, WHILE_LOOPS: tl.constexpr,
    NEGATIVE_SCALE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # query schedules have no masked head (col_full_start == col_start): two phases suffice
    bh, q_start, q_end, k_start, k_end, _, k_full_end = _load_item(
        SCHEDULE, offset_16, offset_32, offset_64, offset_128, count_16, count_32, count_64,
        count_128, BLOCK_M)
    base = bh * seq_len * HEAD_DIM
    offs_m = q_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = offs_m < q_end
    q = tl.load(Q + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
                mask=row_valid[:, None], other=0.0)
    allowed_lo = tl.load(ROW_START + offs_m, mask=row_valid, other=0)
    allowed_hi = tl.load(ROW_END + offs_m, mask=row_valid, other=0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    key_offsets = (k_start + offs_n)[:, None] * HEAD_DIM + offs_d[None, :]
    K_TILES = K + base + key_offsets
    V_TILES = V + base + key_offsets
    STEP: tl.constexpr = BLOCK_N * HEAD_DIM
    n_full = (k_full_end - k_start) // BLOCK_N
    n_tiles = tl.cdiv(k_end - k_start, BLOCK_N)

    if WHILE_LOOPS:
        tile = 0
        while tile < n_full:  # phase 1
            acc, l_i, m_i = _fwd_tile(
                acc, l_i, m_i, q, K_TILES + tile * STEP, V_TILES + tile * STEP,
                k_start + tile * BLOCK_N + offs_n, k_end, allowed_lo, allowed_hi, qk_scale,
                False, NEGATIVE_SCALE, DOT_PRECISION)
            tile += 1
        while tile < n_tiles:  # phase 2
            acc, l_i, m_i = _fwd_tile(
                acc, l_i, m_i, q, K_TILES + tile * STEP, V_TILES + tile * STEP,
                k_start + tile * BLOCK_N + offs_n, k_end, allowed_lo, allowed_hi, qk_scale,
                True, NEGATIVE_SCALE, DOT_PRECISION)
            tile += 1
    else:
        # Phase 1: key tiles that every row of the item sees whole; no mask.
        for tile in range(0, n_full):
            acc, l_i, m_i = _fwd_tile(
                acc, l_i, m_i, q, K_TILES + tile * STEP, V_TILES + tile * STEP,
                k_start + tile * BLOCK_N + offs_n, k_end, allowed_lo, allowed_hi, qk_scale,
                False, NEGATIVE_SCALE, DOT_PRECISION)
        # Phase 2: boundary tiles; each row keeps only the keys inside its own range.
        for tile in range(n_full, n_tiles):
            acc, l_i, m_i = _fwd_tile(
                acc, l_i, m_i, q, K_TILES + tile * STEP, V_TILES + tile * STEP,
                k_start + tile * BLOCK_N + offs_n, k_end, allowed_lo, allowed_hi, qk_scale,
                True, NEGATIVE_SCALE, DOT_PRECISION)

    # Epilogue: normalise; store O and the base-2 log-sum-exp.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(OUT + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
             out.to(OUT.dtype.element_ty), mask=row_valid[:, None])
    tl.store(LSE + bh * seq_len + offs_m, m_i + tl.log2(l_safe), mask=row_valid)


@triton.jit
def _dq_tile(
    dq, q, do, lse, delta,
    # this key tile: pointers (BLOCK_N, D), key indices (BLOCK_N,), end of the item's keys
    K_TILE, V_TILE, cols, k_end,
    # each query row's allowed key range (BLOCK_M,), and scale·log2(e)
    allowed_lo, allowed_hi, qk_scale,
    MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dQ += dS·K over one key tile (dS in units of the scaled scores); returns dq."""
    if MASKED:
        col_valid = cols < k_end
        k = tl.load(K_TILE, mask=col_valid[:, None], other=0.0)
        v = tl.load(V_TILE, mask=col_valid[:, None], other=0.0)
    else:
        k = tl.load(K_TILE)
        v = tl.load(V_TILE)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASKED:
        allowed = (cols[None, :] >= allowed_lo[:, None]) & (cols[None, :] < allowed_hi[:, None])
        scores = tl.where(allowed, scores, float("-inf"))
    p = tl.exp2(scores - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)


@_autotune("dq", "BLOCK_M", "BLOCK_N", _DQ_CONFIGS)
@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_dq(
    # inputs (BH, L, D) and LSE (BH, L); outputs DQ (BH, L, D) and DELTA (BH, L) fp32
    Q, K, V, OUT, DO, LSE, DQ, DELTA,
    # mask: each row's allowed key range (L,) int32; the packed query schedule, and the offset
    # and item count of each row-tile size in it
    ROW_START, ROW_END, SCHEDULE, offset_16, offset_32, offset_64, offset_128,
    count_16, count_32, count_64, count_128,
    # sizes and scalars
    seq_len, qk_scale, sm_scale, tune_key,
    # meta-parameters
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, WHILE_LOOPS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # query schedules have no masked head (col_full_start == col_start): two phases suffice
    bh, q_start, q_end, k_start, k_end, _, k_full_end = _load_item(
        SCHEDULE, offset_16, offset_32, offset_64, offset_128, count_16, count_32, count_64,
        count_128, BLOCK_M)
    base = bh * seq_len * HEAD_DIM
    offs_m = q_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = offs_m < q_end
    row_offsets = offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(Q + base + row_offsets, mask=row_valid[:, None], other=0.0)
    do = tl.load(DO + base + row_offsets, mask=row_valid[:, None], other=0.0)
    out = tl.load(OUT + base + row_offsets, mask=row_valid[:, None], other=0.0)
    # delta = rowsum(O ⊙ dO), also needed by the dK/dV kernel that runs next
    delta = tl.sum(out.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh * seq_len + offs_m, delta, mask=row_valid)
    lse = tl.load(LSE + bh * seq_len + offs_m, mask=row_valid, other=0.0)
    allowed_lo = tl.load(ROW_START + offs_m, mask=row_valid, other=0)
    allowed_hi = tl.load(ROW_END + offs_m, mask=row_valid, other=0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    key_offsets = (k_start + offs_n)[:, None] * HEAD_DIM + offs_d[None, :]
    K_TILES = K + base + key_offsets
    V_TILES = V + base + key_offsets
    STEP: tl.constexpr = BLOCK_N * HEAD_DIM
    n_full = (k_full_end - k_start) // BLOCK_N
    n_tiles = tl.cdiv(k_end - k_start, BLOCK_N)

    if WHILE_LOOPS:
        tile = 0
        while tile < n_full:  # phase 1
            dq = _dq_tile(dq, q, do, lse, delta, K_TILES + tile * STEP, V_TILES + tile * STEP,
                          k_start + tile * BLOCK_N + offs_n, k_end, allowed_lo, allowed_hi,
                          qk_scale, False, DOT_PRECISION)
            tile += 1
        while tile < n_tiles:  # phase 2
            dq = _dq_tile(dq, q, do, lse, delta, K_TILES + tile * STEP, V_TILES + tile * STEP,
                          k_start + tile * BLOCK_N + offs_n, k_end, allowed_lo, allowed_hi,
                          qk_scale, True, DOT_PRECISION)
            tile += 1
    else:
        # Phase 1: key tiles every row sees whole.
        for tile in range(0, n_full):
            dq = _dq_tile(dq, q, do, lse, delta, K_TILES + tile * STEP, V_TILES + tile * STEP,
                          k_start + tile * BLOCK_N + offs_n, k_end, allowed_lo, allowed_hi,
                          qk_scale, False, DOT_PRECISION)
        # Phase 2: boundary tiles, masked per row.
        for tile in range(n_full, n_tiles):
            dq = _dq_tile(dq, q, do, lse, delta, K_TILES + tile * STEP, V_TILES + tile * STEP,
                          k_start + tile * BLOCK_N + offs_n, k_end, allowed_lo, allowed_hi,
                          qk_scale, True, DOT_PRECISION)

    tl.store(DQ + base + row_offsets, (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=row_valid[:, None])


@triton.jit
def _dkdv_tile(
    dk, dv, k, v,
    # this query tile: pointers (BLOCK_M, D) and (BLOCK_M,), query indices, end of the item
    Q_TILE, DO_TILE, LSE_TILE, DELTA_TILE, rows, q_end,
    # each query row's allowed key range (L,) int32, this program's key indices (BLOCK_N,)
    ROW_START, ROW_END, keys, qk_scale,
    MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dV += Pᵀ·dO and dK += dSᵀ·Q over one query tile; returns (dk, dv)."""
    if MASKED:
        row_valid = rows < q_end
        q = tl.load(Q_TILE, mask=row_valid[:, None], other=0.0)
        do = tl.load(DO_TILE, mask=row_valid[:, None], other=0.0)
        lse = tl.load(LSE_TILE, mask=row_valid, other=0.0)
        delta = tl.load(DELTA_TILE, mask=row_valid, other=0.0)
    else:
        q = tl.load(Q_TILE)
        do = tl.load(DO_TILE)
        lse = tl.load(LSE_TILE)
        delta = tl.load(DELTA_TILE)
    scores_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (N, M)
    if MASKED:
        allowed_lo = tl.load(ROW_START + rows, mask=row_valid, other=0)
        allowed_hi = tl.load(ROW_END + rows, mask=row_valid, other=0)
        allowed = (keys[:, None] >= allowed_lo[None, :]) & (keys[:, None] < allowed_hi[None, :])
        scores_t = tl.where(allowed, scores_t, float("-inf"))
    p_t = tl.exp2(scores_t - lse[None, :])
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@_autotune("dkdv", "BLOCK_N", "BLOCK_M", _DKDV_CONFIGS)
@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_dkdv(
    # inputs (BH, L, D), LSE and DELTA (BH, L) fp32; outputs DK, DV (BH, L, D)
    Q, K, V, DO, LSE, DELTA, DK, DV,
    # mask: each row's allowed key range (L,) int32; the packed key schedule, and the offset
    # and item count of each row-tile size in it
    ROW_START, ROW_END, SCHEDULE, offset_16, offset_32, offset_64, offset_128,
    count_16, count_32, count_64, count_128,
    # sizes and scalars
    seq_len, qk_scale, sm_scale, tune_key,
    # meta-parameters: BLOCK_N keys per program, BLOCK_M queries per loop step
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, WHILE_LOOPS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    bh, k_start, k_end, q_start, q_end, q_full_start, q_full_end = _load_item(
        SCHEDULE, offset_16, offset_32, offset_64, offset_128, count_16, count_32, count_64,
        count_128, BLOCK_N)
    base = bh * seq_len * HEAD_DIM
    keys = k_start + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    key_valid = keys < k_end
    key_offsets = keys[:, None] * HEAD_DIM + offs_d[None, :]
    k = tl.load(K + base + key_offsets, mask=key_valid[:, None], other=0.0)
    v = tl.load(V + base + key_offsets, mask=key_valid[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    query_offsets = (q_start + offs_m)[:, None] * HEAD_DIM + offs_d[None, :]
    Q_TILES = Q + base + query_offsets
    DO_TILES = DO + base + query_offsets
    LSE_TILES = LSE + bh * seq_len + q_start + offs_m
    DELTA_TILES = DELTA + bh * seq_len + q_start + offs_m
    STEP: tl.constexpr = BLOCK_M * HEAD_DIM
    # query tiles [0, n_head) and [n_full, n_tiles) are masked, the ones between are not
    n_head = tl.cdiv(q_full_start - q_start, BLOCK_M)
    n_full = tl.maximum((q_full_end - q_start) // BLOCK_M, n_head)
    n_tiles = tl.cdiv(q_end - q_start, BLOCK_M)

    if WHILE_LOOPS:
        tile = 0
        while tile < n_head:  # phase 0
            dk, dv = _dkdv_tile(
                dk, dv, k, v, Q_TILES + tile * STEP, DO_TILES + tile * STEP,
                LSE_TILES + tile * BLOCK_M, DELTA_TILES + tile * BLOCK_M,
                q_start + tile * BLOCK_M + offs_m, q_end, ROW_START, ROW_END, keys, qk_scale,
                True, DOT_PRECISION)
            tile += 1
        while tile < n_full:  # phase 1
            dk, dv = _dkdv_tile(
                dk, dv, k, v, Q_TILES + tile * STEP, DO_TILES + tile * STEP,
                LSE_TILES + tile * BLOCK_M, DELTA_TILES + tile * BLOCK_M,
                q_start + tile * BLOCK_M + offs_m, q_end, ROW_START, ROW_END, keys, qk_scale,
                False, DOT_PRECISION)
            tile += 1
        while tile < n_tiles:  # phase 2
            dk, dv = _dkdv_tile(
                dk, dv, k, v, Q_TILES + tile * STEP, DO_TILES + tile * STEP,
                LSE_TILES + tile * BLOCK_M, DELTA_TILES + tile * BLOCK_M,
                q_start + tile * BLOCK_M + offs_m, q_end, ROW_START, ROW_END, keys, qk_scale,
                True, DOT_PRECISION)
            tile += 1
    else:
        # Phase 0 (block-causal key tiles that straddle scales): the queries of the tile's
        # earlier scales, which see only some of its keys; masked.
        for tile in range(0, n_head):
            dk, dv = _dkdv_tile(
                dk, dv, k, v, Q_TILES + tile * STEP, DO_TILES + tile * STEP,
                LSE_TILES + tile * BLOCK_M, DELTA_TILES + tile * BLOCK_M,
                q_start + tile * BLOCK_M + offs_m, q_end, ROW_START, ROW_END, keys, qk_scale,
                True, DOT_PRECISION)
        # Phase 1: query tiles whose rows all see every key of this program.
        for tile in range(n_head, n_full):
            dk, dv = _dkdv_tile(
                dk, dv, k, v, Q_TILES + tile * STEP, DO_TILES + tile * STEP,
                LSE_TILES + tile * BLOCK_M, DELTA_TILES + tile * BLOCK_M,
                q_start + tile * BLOCK_M + offs_m, q_end, ROW_START, ROW_END, keys, qk_scale,
                False, DOT_PRECISION)
        # Phase 2: boundary query tiles, masked by each query row's allowed key range.
        for tile in range(n_full, n_tiles):
            dk, dv = _dkdv_tile(
                dk, dv, k, v, Q_TILES + tile * STEP, DO_TILES + tile * STEP,
                LSE_TILES + tile * BLOCK_M, DELTA_TILES + tile * BLOCK_M,
                q_start + tile * BLOCK_M + offs_m, q_end, ROW_START, ROW_END, keys, qk_scale,
                True, DOT_PRECISION)

    tl.store(DK + base + key_offsets, (dk * sm_scale).to(DK.dtype.element_ty),
             mask=key_valid[:, None])
    tl.store(DV + base + key_offsets, dv.to(DV.dtype.element_ty), mask=key_valid[:, None])


# --------------------------------------------------------------------------------------------
# Launch plans: everything derivable from (mask, device, B·H, D, dtype, scale) is built once
# --------------------------------------------------------------------------------------------

def _tune_key(mask: ScaleMask, batch_heads: int) -> int:
    """A stable int naming the pyramid, the pattern and the batch·heads size class (a power of
    two), part of the autotuning key: small grids favour other tiles than large ones."""
    size_class = 1 << max(0, math.ceil(math.log2(batch_heads)))
    return zlib.crc32(repr((mask.patch_nums, mask.pattern, size_class)).encode()) & 0x7FFFFFFF


def _schedule_args(schedule: PackedSchedule) -> tuple:
    """The table, then its offset and item count per row-tile size (16, 32, 64, 128)."""
    blocks = SCHEDULE_BLOCKS
    return (schedule.table, *(schedule.offsets[b] for b in blocks),
            *(schedule.counts[b] for b in blocks))


class _KernelLaunch:
    """One kernel of one plan: its trailing (non-tensor-data) arguments and, after the first
    launch, the tuned grid and meta-parameters, so that later launches skip the autotuner.

    The first launch goes through ``triton.autotune`` (tuning, or its cached result for the
    key), and the config it ran with is kept. The autotuning key (L, D, pyramid and pattern,
    B·H class, dtypes) is fixed by the plan, so the config cannot change for this plan. The
    second launch goes through the JIT launcher with that config and keeps the compiled
    kernel's own launcher (``CompiledKernel[grid]``); later launches call it directly, which
    skips the JIT's argument binding, specialisation and cache lookup (tens of microseconds
    of host time per launch). The one specialisation that can differ between calls of a plan
    is the 16-byte alignment of the tensors' addresses, so a call whose tensors are not all
    aligned like the kept kernel's goes through the JIT launcher again.
    """

    __slots__ = ("batch_heads", "constants", "meta", "row_block", "runner", "schedule", "tail",
                 "tuned", "tuner")

    def __init__(
        self,
        tuner: triton.runtime.Autotuner,
        row_block: str,
        schedule: PackedSchedule,
        batch_heads: int,
        meta: dict,
        tail: tuple,
    ) -> None:
        self.tuner = tuner
        self.row_block = row_block
        self.schedule = schedule
        self.batch_heads = batch_heads
        self.meta = meta
        self.tail = tail
        self.tuned: tuple[tuple[int], dict] | None = None
        self.runner: Callable[..., None] | None = None
        self.constants: tuple = ()

    def _grid(self, meta: dict) -> tuple[int]:
        return (self.schedule.counts[meta[self.row_block]] * self.batch_heads,)

    def __call__(self, *tensors: torch.Tensor) -> None:
        if self.runner is not None and all(t.data_ptr() % 16 == 0 for t in tensors):
            self.runner(*tensors, *self.tail, *self.constants)
            return
        if self.tuned is not None:
            grid, kwargs = self.tuned
            kernel = self.tuner.fn.run(*tensors, *self.tail, grid=grid, warmup=False, **kwargs)
            if self.runner is None:
                self._keep_runner(kernel, tensors, grid, kwargs)
            return
        self.tuner[self._grid](*tensors, *self.tail, **self.meta)
        config = self.tuner.best_config
        self.tuned = (self._grid(config.kwargs), {**self.meta, **config.all_kwargs()})

    def _keep_runner(
        self, kernel: object, tensors: tuple[torch.Tensor, ...], grid: tuple[int], kwargs: dict
    ) -> None:
        """Keep ``kernel``'s launcher if it was compiled for aligned tensors and the kernel's
        parameters are the positional arguments followed by the constexprs (not in the
        interpreter, whose kernels have no launcher)."""
        if _BUILT_FOR_INTERPRETER or not isinstance(kernel, triton.compiler.CompiledKernel):
            return
        if not all(t.data_ptr() % 16 == 0 for t in tensors):
            return
        params = self.tuner.fn.params
        constexprs = [p.name for p in params if p.is_constexpr]
        positional = len(tensors) + len(self.tail)
        if [p.name for p in params[positional:]] != constexprs or positional + len(
                constexprs) != len(params):
            return
        self.constants = tuple(kwargs[name] for name in constexprs)
        self.runner = kernel[(grid[0], 1, 1)]


class _Launch:
    """The launch plan of one (mask, device, B·H, D, dtype, scale): mask row bounds and packed
    schedules on the device, scalars, and one :class:`_KernelLaunch` per kernel."""

    def __init__(
        self,
        mask: ScaleMask,
        device: torch.device,
        batch_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        scale: float,
    ) -> None:
        self.batch_heads = batch_heads
        self.seq_len = mask.length
        self.device_index = device.index if device.type == "cuda" else None
        row_start, row_end = mask.row_bounds(device)
        self.query = packed_schedule(mask, "query", device)
        self.key = packed_schedule(mask, "key", device)
        qk_scale = scale * _LOG2_E
        tune_key = _tune_key(mask, batch_heads)
        meta = {
            "HEAD_DIM": head_dim,
            "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32",
            "WHILE_LOOPS": _BUILT_FOR_INTERPRETER,
        }
        query_args = (row_start, row_end, *_schedule_args(self.query))
        key_args = (row_start, row_end, *_schedule_args(self.key))
        self.fwd = _KernelLaunch(_attn_fwd, "BLOCK_M", self.query, batch_heads,
                                 {**meta, "NEGATIVE_SCALE": qk_scale < 0},
                                 (*query_args, self.seq_len, qk_scale, tune_key))
        self.dq = _KernelLaunch(_attn_bwd_dq, "BLOCK_M", self.query, batch_heads, meta,
                                (*query_args, self.seq_len, qk_scale, scale, tune_key))
        self.dkdv = _KernelLaunch(_attn_bwd_dkdv, "BLOCK_N", self.key, batch_heads, meta,
                                  (*key_args, self.seq_len, qk_scale, scale, tune_key))

    @classmethod
    def of(cls, q: torch.Tensor, mask: ScaleMask, scale: float) -> _Launch:
        """The (cached) launch plan for q of shape (B, H, L, D)."""
        batch, heads, _, head_dim = q.shape
        return _cached_launch(mask, q.device, batch * heads, head_dim, q.dtype, scale)

    def on_device(self) -> contextlib.AbstractContextManager:
        """Triton launches on the current CUDA device: switch to ours only if it differs."""
        if self.device_index is None or self.device_index == torch.cuda.current_device():
            return contextlib.nullcontext()
        return torch.cuda.device(self.device_index)


@functools.lru_cache(maxsize=64)
def _cached_launch(
    mask: ScaleMask,
    device: torch.device,
    batch_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    scale: float,
) -> _Launch:
    """Per (mask, device, B·H, D, dtype, scale): keeps the Python work per call small."""
    return _Launch(mask, device, batch_heads, head_dim, dtype, scale)


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, launch: _Launch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns O (B, H, L, D) and the base-2 log-sum-exp (BH, L) fp32."""
    out = torch.empty_like(q)
    lse = torch.empty(launch.batch_heads, launch.seq_len, device=q.device, dtype=torch.float32)
    with launch.on_device():
        launch.fwd(q, k, v, out, lse)
    return out, lse


def _backward_dq(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    launch: _Launch,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns dQ (B, H, L, D) and delta = rowsum(O ⊙ dO) (BH, L) fp32."""
    dq = torch.empty_like(q)
    delta = torch.empty_like(lse)
    with launch.on_device():
        launch.dq(q, k, v, out, grad_out, lse, dq, delta)
    return dq, delta


def _backward_dkdv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    grad_out: torch.Tensor,
    launch: _Launch,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns dK, dV, each (B, H, L, D) in k's dtype."""
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    with launch.on_device():
        launch.dkdv(q, k, v, grad_out, lse, delta, dk, dv)
    return dk, dv


class BlockSparseAttention(torch.autograd.Function):
    """``softmax(q·kᵀ·scale + mask)·v`` with a Triton forward and backward.

    Call through :func:`triton_attention`, which validates the inputs first. The backward is two
    launches: dQ (which also writes delta = rowsum(O ⊙ dO)), then dK/dV (which reads delta).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        launch: _Launch,
    ) -> torch.Tensor:
        out, lse = _forward(q, k, v, launch)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.launch = launch
        return out

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        launch = ctx.launch
        grad_out = grad_out.contiguous()  # a no-op for the usual contiguous gradient
        dq = torch.empty_like(q)
        delta = torch.empty_like(lse)
        dk = dv = None
        with launch.on_device():
            launch.dq(q, k, v, out, grad_out, lse, dq, delta)
            if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
                dk = torch.empty_like(k)
                dv = torch.empty_like(v)
                launch.dkdv(q, k, v, grad_out, lse, delta, dk, dv)
        return dq, dk, dv, None


# --------------------------------------------------------------------------------------------
# Public wrapper
# --------------------------------------------------------------------------------------------

def check_triton_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> None:
    """What this backend needs beyond :func:`check_attention_inputs` (which must pass first)."""
    if q.dtype not in _DTYPES:
        raise ValueError(f"the triton backend takes {_DTYPES}, got {q.dtype}")
    if q.device.type != "cuda" and not (q.device.type == "cpu" and _interpreted()):
        raise ValueError(
            f"the triton backend runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1 set "
            f"before import), got {q.device}"
        )
    if not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous()):
        name = next(n for n, t in (("q", q), ("k", k), ("v", v)) if not t.is_contiguous())
        raise ValueError(f"{name} must be contiguous (B, H, L, D); call .contiguous() first")
    if q.shape[-1] not in _HEAD_DIMS:
        raise ValueError(f"the triton backend supports head dims {_HEAD_DIMS}, got {q.shape[-1]}")
    if q.shape[0] * q.shape[1] == 0:
        raise ValueError(f"q, k, v are empty: {tuple(q.shape)}")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float, got {scale!r}")


def run_checked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: ScaleMask, scale: float
) -> torch.Tensor:
    """:func:`triton_attention` for inputs that passed ``check_attention_inputs`` and
    :func:`check_triton_inputs` (the thin path of :func:`kernels.attention`)."""
    launch = _Launch.of(q, mask, float(scale))
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return BlockSparseAttention.apply(q, k, v, launch)
    return _forward(q, k, v, launch)[0]  # no graph to record: skip the autograd Function


def triton_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: ScaleMask, scale: float
) -> torch.Tensor:
    """Block-sparse attention over a token pyramid, differentiable in q, k and v.

    Args:
        q, k, v: contiguous (B, H, L, D) tensors, fp16, bf16 or fp32, D ∈ {64, 128}, on one
            CUDA device (or CPU under ``TRITON_INTERPRET=1``).
        mask: the pyramid's :class:`ScaleMask`; ``mask.length`` must equal L.
        scale: softmax scale.

    Returns:
        (B, H, L, D) tensor in q's dtype.

    Raises:
        ValueError: on any input this kernel cannot compute exactly.
    """
    check_attention_inputs(q, k, v, mask, scale, require_mask=True)
    check_triton_inputs(q, k, v, scale)
    return run_checked(q, k, v, mask, scale)
