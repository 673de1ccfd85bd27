"""The fast inference path: half-precision blocks, per-scale CUDA graphs, sync-free sampling.

Opt-in and checked against the float32 reference (``tests/test_fast.py``,
``benchmarks/inference.py``); the reference path is unchanged. Entry point:
``pipe.to_fast()`` → :class:`FastPipeline` (``generate``, ``sample_tokens``, ``encode``,
``decode_fhat``), or :class:`FastRunner` as a drop-in :class:`~hmar_core.sampler.ScaleModel`.
"""

from .engine import CompiledOrEager, FastPipeline, cast_blocks_
from .graphs import GraphCache
from .runner import FastRunner, default_dtype
from .sampling import (
    GuidedScaleModel,
    draw,
    fast_sample,
    fused_top_k_top_p_filter,
    sample_from_logits_fast,
)

__all__ = [
    "CompiledOrEager",
    "FastPipeline",
    "FastRunner",
    "GraphCache",
    "GuidedScaleModel",
    "cast_blocks_",
    "default_dtype",
    "draw",
    "fast_sample",
    "fused_top_k_top_p_filter",
    "sample_from_logits_fast",
]
