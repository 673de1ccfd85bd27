"""The fast inference path: half-precision blocks, per-scale CUDA graphs, sync-free sampling.

Checked against the float32 reference engine (``tests/test_fast.py``, ``tests/test_engines.py``).
Entry point: ``Pipeline.from_pretrained(folder, engine="fast")`` (or ``"auto"``), whose every
method then runs on :class:`FastEngine`; :class:`FastRunner` is also a drop-in
:class:`~hmar_core.sampler.ScaleModel`.
"""

from .engine import CompiledOrEager, FastEngine, cast_blocks_
from .graphs import GraphCache
from .runner import FastRunner, default_dtype
from .sampling import (
    GUMBEL,
    GuidedScaleModel,
    argmax_choose,
    draw,
    exponential_noise,
    fast_sample,
    fused_top_k_top_p_filter,
    sample_from_logits_fast,
)

__all__ = [
    "CompiledOrEager",
    "FastEngine",
    "FastRunner",
    "GUMBEL",
    "GraphCache",
    "GuidedScaleModel",
    "argmax_choose",
    "cast_blocks_",
    "default_dtype",
    "draw",
    "exponential_noise",
    "fast_sample",
    "fused_top_k_top_p_filter",
    "sample_from_logits_fast",
]
