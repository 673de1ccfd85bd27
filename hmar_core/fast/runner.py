"""FastRunner: the transformer's inference pass in bf16, per-scale CUDA graphs, CFG inside.

Shape legend: B = batch, R = rows the network runs (2B with both CFG halves, else B),
n = tokens of one scale (pn²), L = tokens of the pyramid, C = width, Cvae = latent channels,
V = vocab, H = heads, D = head dim.

What differs from :meth:`HMARTransformer.forward_scale` (the float32 reference), and why:

* Block weights and activations in ``dtype`` (bf16 by default on accelerators); the input
  embedding, both heads (AdaLN + vocabulary projection) and the CFG combination stay float32.
* The class-conditioned AdaLN modulations of every block and head depend only on the labels:
  they are computed once per run (:meth:`FastRunner.begin`) into static buffers instead of at
  every scale (saves re-reading the ``ada_lin`` weights, a third of a block's weights).
* ``q`` and ``k`` are normalised together (norms in float32, one scaling kernel); residual
  adds and modulations are single ``addcmul`` kernels computed in float32 (the residual stream
  stays float32 by default, as under autocast); on CUDA, fc1's bias and GELU run in the
  cuBLASLt epilogue (``torch._addmm_activation``, checked against the two-op form once).
* :meth:`FastRunner.guided` computes both CFG halves and their combination in one pass, so a
  whole scale (embedding → blocks → heads → CFG) is one CUDA graph per (scale, branch, batch)
  (:class:`~hmar_core.fast.graphs.GraphCache`); CPU runs the same code eagerly.
* With ``fused`` (default on CUDA when Triton works, checked once against the torch ops), the
  elementwise work runs in Triton kernels (:mod:`~hmar_core.fast.fused`): a block is
  ``[LN+mod] → qkv → [qk-norm] → SDPA → proj → [residual+LN+mod] → fc1+GELU → fc2 →
  [residual + next block's LN+mod]``, the last block's kernel producing the head's modulated
  input; same math (float32 statistics), 5 elementwise kernels per block instead of 9.
* VAR models keep their keys/values in static per-run buffers (one slice per scale) instead of
  a growing :class:`~hmar_core.transformer.KVCache`, so their scales are graphs too.
* No label validation inside the pass (no host reads): :meth:`begin` validates once per run.
"""

from __future__ import annotations

import importlib.util
import logging
import weakref
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F

from ..pyramid import scale_slices
from ..sampler import ScaleInput, Weight
from ..transformer import AdaLNBlock, AdaLNHead, Branch, HMARTransformer
from .checked import checked_kernel
from .fp8 import Fp8Weight, fp8_linear, fp8_out_dtype, quantize_rows
from .graphs import GraphCache

__all__ = ["FastRunner", "default_dtype"]

# A block GEMM's input: a tensor, or (with FP8 GEMMs) its row-wise e4m3 values (M, K) and their
# (M, 1) float32 scales, as the fused kernels write them.
Activation = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
_FP8_LINEARS = ("qkv", "proj", "fc1", "fc2")

logger = logging.getLogger(__name__)

_NORM_EPS = 1e-12  # F.normalize's eps


def check_count(name: str, value: object, minimum: int) -> None:
    """``value`` must be an int (not a bool) ``>= minimum`` (the engine's count options)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 blocks on accelerators, float32 on CPU (where half matmuls are usually slower).

    float16 rather than bfloat16: the same tensor-core speed, 8x finer rounding (top-1 agreement
    with the float32 path 99.7 % vs 98.2 % at d16 on the H200, BENCHMARKS.md). Overflow is not a
    concern here: the residual stream stays float32 and every block matmul reads LayerNorm-
    normalised, modulated inputs. ``dtype=torch.bfloat16`` is one argument away.
    """
    return torch.float32 if device.type == "cpu" else torch.float16


@dataclass
class _Block:
    """One block's weights in the run dtype (shared with the module when dtypes match)."""

    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    proj_w: torch.Tensor
    proj_b: torch.Tensor
    fc1_w: torch.Tensor
    fc1_b: torch.Tensor
    fc2_w: torch.Tensor
    fc2_b: torch.Tensor
    ada_w: torch.Tensor
    ada_b: torch.Tensor
    qk_mult: torch.Tensor  # (1, 1, 2, H, 1) float32: q's temperature exp(clamped log), k's 1
    q_mult: torch.Tensor  # (H,) float32: q's temperature (the fused kernel's input)
    fp8: dict[str, Fp8Weight] | None = None  # qkv, proj, fc1, fc2 in e4m3 (FP8 GEMMs only)

    def with_fp8(self, out_dtype: torch.dtype) -> _Block:
        """This block with e4m3 copies of its four GEMM weights (:mod:`hmar_core.fast.fp8`)."""
        self.fp8 = {name: Fp8Weight.from_linear(getattr(self, f"{name}_w"),
                                                getattr(self, f"{name}_b"), out_dtype)
                    for name in _FP8_LINEARS}
        return self

    @classmethod
    def from_module(cls, block: AdaLNBlock, dtype: torch.dtype) -> _Block:
        attn = block.attn
        qkv_b = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
        scale_mul = attn.log_scale.detach().float().clamp_max(attn.max_scale_mul).exp()
        qk_mult = torch.stack([scale_mul.view(-1), torch.ones_like(scale_mul.view(-1))])
        def cast(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.detach().to(dtype)

        return cls(
            qkv_w=cast(attn.qkv.weight), qkv_b=cast(qkv_b),
            proj_w=cast(attn.proj.weight), proj_b=cast(attn.proj.bias),
            fc1_w=cast(block.ffn.fc1.weight), fc1_b=cast(block.ffn.fc1.bias),
            fc2_w=cast(block.ffn.fc2.weight), fc2_b=cast(block.ffn.fc2.bias),
            ada_w=cast(block.ada_lin.weight), ada_b=cast(block.ada_lin.bias),
            qk_mult=qk_mult.view(1, 1, 2, -1, 1),
            q_mult=scale_mul.view(-1).contiguous(),
        )


@dataclass
class _Head:
    """A head's weights in float32."""

    ada_w: torch.Tensor
    ada_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor

    @classmethod
    def from_module(cls, head: AdaLNHead) -> _Head:
        return cls(*(t.detach().float() for t in (
            head.ada_lin.weight, head.ada_lin.bias, head.out.weight, head.out.bias)))


@dataclass
class _Rows:
    """Per-run, per-row-count state in static buffers (written with ``copy_`` only).

    Attributes:
        cond: (R, C) float32 class embedding (scale 0's input).
        ada: per block (R, 6, C) float32 (computed in the run dtype; the +1 in float32):
            gamma1, gamma2, scale1+1, scale2+1, shift1, shift2.
        head_ada: per branch (R, 2, C) float32: scale+1, shift.
        keys, values: VAR only, per block (R, L, H, D).
        labels: weak reference to the labels these buffers were computed for.
        version: their version counter then.
        key: the label values and weight versions they were computed for, where known
            (a later run with equal labels reuses the buffers without any device work).
    """

    cond: torch.Tensor
    ada: list[torch.Tensor]
    head_ada: dict[str, torch.Tensor]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    labels: weakref.ref[torch.Tensor] | None = None
    version: int = -1
    key: tuple[int, ...] | None = None


class FastRunner:
    """The fast :class:`~hmar_core.sampler.ScaleModel` (and ``GuidedScaleModel``).

    Args:
        transformer: the (eval-mode) :class:`HMARTransformer`; it is not modified. Weights
            already in ``dtype`` are shared, others are copied (see
            :func:`~hmar_core.fast.engine.cast_blocks_` to avoid the copy).
        dtype: block dtype; default :func:`default_dtype` of the transformer's device.
        cuda_graphs: capture each (scale, branch, batch) as a CUDA graph on CUDA devices.
        residual_dtype: dtype of the residual stream; default ``dtype``
            (:class:`~hmar_core.fast.engine.FastEngine` passes float32).
        fused: run the elementwise work in the Triton kernels of :mod:`hmar_core.fast.fused`.
            ``None`` (auto): on CUDA when Triton imports and the kernels agree with the torch
            ops on a first check, else the torch ops (logged). ``True`` forces them and raises
            if they cannot run (on CPU they need ``TRITON_INTERPRET=1``, for tests).
        fp8: run the blocks' four GEMMs in FP8 e4m3 with per-token and per-channel scales
            (:mod:`hmar_core.fast.fp8`; Hopper/Ada GPUs, or CPU for tests). The fused kernels
            then write their LayerNorm outputs as fp8. Lossy: about 3 significant digits per
            operand. Raises ``RuntimeError`` where FP8 GEMMs cannot run.
        fp8_min_rows: with ``fp8``, a scale's pass uses the FP8 GEMMs only from this many
            token rows (R·n) on; smaller passes, where the GEMMs are too small for FP8 to pay
            for its quantisation kernels (batch-1 editing), keep the ``dtype`` weights.
        attention_kernel: HMAR's attention (q/k norm + SDPA) as one Triton kernel
            (:mod:`hmar_core.fast.attention`). ``None`` (auto): on CUDA when it agrees with the
            torch ops on a first check; ``True`` forces it (CPU: ``TRITON_INTERPRET=1``).
            VAR models (attention over a cache) keep SDPA.
    """

    def __init__(
        self,
        transformer: HMARTransformer,
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = True,
        residual_dtype: torch.dtype | None = None,
        fused: bool | None = None,
        fp8: bool = False,
        fp8_min_rows: int = 2048,
        attention_kernel: bool | None = None,
    ) -> None:
        cfg = transformer.cfg
        self.cfg = cfg
        self.device = transformer.pos_start.device
        self.dtype = dtype if dtype is not None else default_dtype(self.device)
        self.residual_dtype = residual_dtype if residual_dtype is not None else self.dtype
        self.stateful = cfg.kind == "var"
        self.graphs = GraphCache(enabled=cuda_graphs)
        self._class_embed = transformer.class_embed.weight.detach().float()
        self._pos_start = transformer.pos_start.detach().float()
        self._pos_embed = transformer.pos_embed.detach().float()
        self._level_embed = transformer.level_embed.weight.detach().float()
        self._word_w = transformer.word_embed.weight.detach().float()
        self._word_b = transformer.word_embed_bias.detach().float()
        base = [_Block.from_module(b, self.dtype) for b in transformer.base_blocks]
        self._branches: dict[str, list[_Block]] = {
            "ns": base + [_Block.from_module(b, self.dtype) for b in transformer.ns_blocks]}
        self._heads: dict[str, _Head] = {"ns": _Head.from_module(transformer.ns_head)}
        if cfg.has_mask_branch:
            self._branches["mask"] = base + [
                _Block.from_module(b, self.dtype) for b in transformer.mask_blocks]
            self._heads["mask"] = _Head.from_module(transformer.mask_head)
            self._mask_embed = transformer.mask_embed.detach().float()
        # every distinct block once, in a fixed order (their AdaLN buffers are per block)
        self._blocks: list[_Block] = list(base)
        for name in ("ns", "mask"):
            self._blocks += self._branches.get(name, [])[len(base):]
        # FP8 GEMMs: their output dtype (the run dtype where supported) and e4m3 weights
        self.fp8_dtype = fp8_out_dtype(self.device, self.dtype) if fp8 else None
        check_count("fp8_min_rows", fp8_min_rows, 0)
        self.fp8_min_rows = fp8_min_rows
        if self.fp8_dtype is not None:
            for block in self._blocks:
                block.with_fp8(self.fp8_dtype)
        self._block_index = {id(b): i for i, b in enumerate(self._blocks)}
        self._slices = scale_slices(cfg.patch_nums)
        self._rows: dict[int, _Rows] = {}
        # what the AdaLN buffers are computed from (their versions are part of a rows key)
        self._ada_sources = [self._class_embed,
                             *(t for b in self._blocks for t in (b.ada_w, b.ada_b)),
                             *(t for h in self._heads.values() for t in (h.ada_w, h.ada_b))]
        self._both_cache: tuple | None = None  # (weakref to labels, version, null, (2B,) labels)
        self.fused_gelu = self.device.type == "cuda" and _fused_gelu_works(self._blocks[0])
        self._fused = _fused_kernels(fused, self.device, self.dtype, self.residual_dtype,
                                     cfg.norm_eps, self._blocks[0], self.fp8_dtype is not None)
        self.fused = self._fused is not None
        self._attention_kernel = None if self.stateful else _attention_kernel(
            attention_kernel, self.device, self.dtype, cfg.heads, cfg.width // cfg.heads)
        self.attention_kernel = self._attention_kernel is not None
        self._cfg_a = torch.ones((), device=self.device)  # 1 + weight (float32)
        self._cfg_b = torch.zeros((), device=self.device)  # weight
        logger.info("FastRunner: %s blocks in %s%s, CUDA graphs %s, fused kernels %s, "
                    "attention kernel %s", len(self._blocks), self.dtype,
                    f" (FP8 GEMMs into {self.fp8_dtype})" if self.fp8_dtype else "",
                    "on" if cuda_graphs and self.device.type == "cuda" else "off",
                    "on" if self.fused else "off", "on" if self.attention_kernel else "off")

    # --------------------------------------------------------------------------- per run
    def begin(self, labels: torch.Tensor, null_class: int | None = None) -> None:
        """Validate labels once and prepare the AdaLN buffers for a sampling run.

        Args:
            labels: (B,) int64 class ids of the conditional half.
            null_class: the unconditional id; when given, the (2B,) CFG rows are prepared too.
        """
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(f"labels must be int64 (B,), got {labels.dtype} {tuple(labels.shape)}")
        values = labels.tolist()  # one host read
        if values and (min(values) < 0 or max(values) > self.cfg.num_classes):
            raise ValueError(f"class ids must be in [0, {self.cfg.num_classes}]")
        # equal labels and unchanged weights reuse the buffers (inference tensors have no
        # version counter: then they are always recomputed)
        weights = None if any(t.is_inference() for t in self._ada_sources) else tuple(
            t._version for t in self._ada_sources)
        self._prepare(labels, None if weights is None else (*values, *weights))
        if null_class is not None:
            self._prepare(self._both(labels, null_class), None if weights is None else
                          (*values, *[null_class] * len(values), *weights))

    def _both(self, labels: torch.Tensor, null_class: int) -> torch.Tensor:
        """The (2B,) CFG labels, cached per labels tensor so buffers are not recomputed."""
        cached = self._both_cache
        if cached is not None and cached[0]() is labels and cached[1] == labels._version \
                and cached[2] == null_class:
            return cached[3]
        both = torch.cat([labels, torch.full_like(labels, null_class)])
        self._both_cache = (weakref.ref(labels), labels._version, null_class, both)
        return both

    def _prepare(self, labels: torch.Tensor, key: tuple[int, ...] | None = None) -> _Rows:
        """AdaLN modulations and class embeddings for these (R,) labels (cached: for the same
        labels tensor, and across runs for equal ``key``, see :meth:`begin`)."""
        rows = labels.shape[0]
        state = self._rows.get(rows)
        if state is not None and state.labels is not None and state.labels() is labels \
                and state.version == labels._version:
            return state
        if state is not None and key is not None and state.key == key:
            state.labels, state.version = weakref.ref(labels), labels._version
            return state
        cond = F.embedding(labels, self._class_embed)  # (R, C) float32
        silu = F.silu(cond)
        silu_run = silu.to(self.dtype)
        width = self.cfg.width
        adas = []
        for block in self._blocks:
            ada = F.linear(silu_run, block.ada_w, block.ada_b).float().view(rows, 6, width)
            adas.append(torch.cat([ada[:, :2], ada[:, 2:4] + 1, ada[:, 4:]], dim=1))
        heads = {}
        for name, head in self._heads.items():
            ada = F.linear(silu, head.ada_w, head.ada_b).view(rows, 2, width)
            heads[name] = torch.cat([ada[:, :1] + 1, ada[:, 1:]], dim=1)
        if state is None:
            keys, values = self._cache_buffers(rows)
            state = _Rows(cond, adas, heads, keys, values)
            self._rows[rows] = state
        else:  # same storage: captured graphs read these buffers
            state.cond.copy_(cond)
            for buffer, ada in zip(state.ada, adas):
                buffer.copy_(ada)
            for name, ada in heads.items():
                state.head_ada[name].copy_(ada)
        state.labels, state.version, state.key = weakref.ref(labels), labels._version, key
        return state

    def _cache_buffers(self, rows: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if not self.stateful:
            return [], []
        cfg = self.cfg
        shape = (rows, cfg.seq_len, cfg.heads, cfg.head_dim)
        count = len(self._branches["ns"])
        make = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(2 * count)]
        return make[:count], make[count:]

    # ----------------------------------------------------------------------- ScaleModel
    def __call__(self, labels: torch.Tensor, inputs: ScaleInput) -> torch.Tensor:
        """Logits (R, n, V) float32 of one scale for R rows of labels (no guidance).

        The :class:`~hmar_core.sampler.ScaleModel` protocol, so the reference
        :func:`~hmar_core.sampler.sample` can drive this runner too. VAR models must be called
        scale by scale from 0 within a run, like the reference KV cache.
        """
        scale, branch = inputs.scale, inputs.branch
        self._check(scale, branch)
        state = self._prepare(labels)
        key = ("plain", scale, branch, labels.shape[0])
        out = self.graphs.run(
            key, lambda *t: self._logits(state, scale, branch, *t, False, False),
            (inputs.x_ns, inputs.x_mask, inputs.masked), self.device)
        return out.clone() if self.graphs.enabled and self.device.type == "cuda" else out

    def guided(self, labels: torch.Tensor, null_class: int, weight: Weight,
               inputs: ScaleInput) -> torch.Tensor:
        """CFG logits ``(1 + t)·cond - t·uncond`` (B, n, V) float32, in one pass.

        Equals :func:`~hmar_core.sampler.guided_logits` (only the conditional half runs when
        ``weight`` is the number 0, except for VAR models whose cache holds both halves); a
        (2,) tensor ``[1 + t, t]`` is copied into the pass's factors on the device (so an
        enclosing captured graph reads it). From a CUDA graph the result is a static buffer:
        read it before the next call.
        """
        scale, branch = inputs.scale, inputs.branch
        self._check(scale, branch)
        batch = labels.shape[0]
        if not isinstance(weight, torch.Tensor) and weight == 0.0 and not self.stateful:
            state = self._prepare(labels)
            key = ("cond", scale, branch, batch)
            fn = lambda *t: self._logits(state, scale, branch, *t, False, False)  # noqa: E731
        else:
            state = self._prepare(self._both(labels, null_class))
            if isinstance(weight, torch.Tensor):
                self._cfg_a.copy_(weight[0])
                self._cfg_b.copy_(weight[1])
            else:
                self._cfg_a.fill_(1.0 + weight)
                self._cfg_b.fill_(weight)
            key = ("cfg", scale, branch, batch)
            fn = lambda *t: self._logits(state, scale, branch, *t, True, True)  # noqa: E731
        return self.graphs.run(key, fn, (inputs.x_ns, inputs.x_mask, inputs.masked), self.device)

    def teacher_forced(
        self,
        labels: torch.Tensor,
        x_ns: torch.Tensor,
        x_mask: torch.Tensor | None = None,
        masked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) float32, scale by scale (same inputs as
        :meth:`HMARTransformer.forward`; equal to it for HMAR's block-diagonal attention and,
        through the cache, VAR's block-causal one)."""
        branch: Branch = "ns" if x_mask is None else "mask"
        outs = [self(labels, ScaleInput(0, None, branch=branch))]
        for si in range(1, self.cfg.num_scales):
            part = slice(self._slices[si].start - 1, self._slices[si].stop - 1)
            outs.append(self(labels, ScaleInput(
                si, x_ns[:, part], None if x_mask is None else x_mask[:, part],
                None if masked is None else masked[:, part], branch)))
        return torch.cat(outs, dim=1)

    def _check(self, scale: int, branch: str) -> None:
        if not 0 <= scale < self.cfg.num_scales:
            raise ValueError(f"scale must be in [0, {self.cfg.num_scales}), got {scale}")
        if branch not in self._branches:
            raise ValueError(f"unknown branch {branch!r} for this model "
                             f"(has {sorted(self._branches)})")

    # --------------------------------------------------------------------------- the pass
    def _logits(
        self,
        state: _Rows,
        scale: int,
        branch: str,
        x_ns: torch.Tensor | None,
        x_mask: torch.Tensor | None,
        masked: torch.Tensor | None,
        duplicate: bool,
        combine: bool,
    ) -> torch.Tensor:
        """One scale: embed → blocks → head (→ CFG). Graph-safe (no syncs, fixed shapes)."""
        pos = self._slices[scale]
        if scale == 0:
            x_BnC = state.cond[:, None] + self._pos_start  # already all R rows
        else:
            if x_ns is None:
                raise ValueError(f"scale {scale} needs its next-scale input x_ns")
            x_BnC = self._word(x_ns, x_mask, masked)
        x_BnC = x_BnC + self._level_embed[scale] + self._pos_embed[:, pos]
        x_RnC = x_BnC.to(self.residual_dtype)
        if duplicate and scale > 0:
            x_RnC = torch.cat([x_RnC, x_RnC])  # both CFG halves see the same tokens
        if self._fused is not None:  # x_RnC is this pass's own intermediate: updated in place
            h = self._blocks_fused(self._fused, x_RnC.contiguous(), branch, state, pos)
            head = self._heads[branch]
            logits = F.linear(h, head.out_w, head.out_b)  # (R, n, V)
        else:
            for block in self._branches[branch]:
                x_RnC = self._block(x_RnC, block, state, pos)
            logits = self._head(x_RnC, self._heads[branch], state.head_ada[branch])
        if not combine:
            return logits
        cond, uncond = logits.chunk(2)
        return cond * self._cfg_a - uncond * self._cfg_b

    def _word(
        self, x_ns: torch.Tensor, x_mask: torch.Tensor | None, masked: torch.Tensor | None
    ) -> torch.Tensor:
        """W·x_ns (+ mask_embed or W·x_mask) + bias in float32, (B, n, C)."""
        tokens = F.linear(x_ns.float(), self._word_w)
        if x_mask is not None:
            second = F.linear(x_mask.float(), self._word_w)
            if masked is not None:
                second = torch.where(masked[..., None], self._mask_embed, second)
            tokens = tokens + second
        return tokens + self._word_b

    def _block(self, x: torch.Tensor, block: _Block, state: _Rows, pos: slice) -> torch.Tensor:
        index = self._block_index[id(block)]
        gamma1, gamma2, scale1, scale2, shift1, shift2 = state.ada[index][:, None].unbind(2)
        width = x.shape[-1]
        eps, run, residual = self.cfg.norm_eps, self.dtype, x.dtype
        rows, n = x.shape[:2]
        fp8 = self._fp8_for(rows * n)
        h = _addcmul(shift1, F.layer_norm(x, (width,), eps=eps), scale1, run)
        x = _addcmul(x, self._attention(h, block, state, index, pos, rows, n, fp8), gamma1,
                     residual)
        h = _addcmul(shift2, F.layer_norm(x, (width,), eps=eps), scale2, run)
        return _addcmul(x, self._mlp(h, block, rows, n, fp8), gamma2, residual)

    def _fp8_for(self, tokens: int) -> bool:
        """Does a pass over this many token rows run the FP8 GEMMs?"""
        return self.fp8_dtype is not None and tokens >= self.fp8_min_rows

    def _blocks_fused(
        self, kernels: ModuleType, x: torch.Tensor, branch: str, state: _Rows, pos: slice
    ) -> torch.Tensor:
        """All blocks of ``branch`` with the fused kernels; returns the head's input (R, n, C)
        float32, ``LN(x)·(scale + 1) + shift`` of the head. ``x`` (R, n, C) is updated in place.

        Each residual kernel also applies the next LayerNorm + modulation (the next block's
        first, or the head's after the last block), so a block launches three of them.
        """
        eps, run = self.cfg.norm_eps, self.dtype
        rows, n = x.shape[:2]
        fp8 = self._fp8_for(rows * n)
        blocks = self._branches[branch]
        first = state.ada[self._block_index[id(blocks[0])]]  # (R, 6, C)

        def modulated(delta: torch.Tensor | None, gamma: torch.Tensor | None,
                      scale: torch.Tensor, shift: torch.Tensor) -> Activation:
            """The next GEMM's input: x (+ delta·gamma, in place), LN, modulation."""
            if fp8:  # written as e4m3 rows by the same kernel
                return kernels.residual_ln_modulate_fp8(x, delta, gamma, scale, shift, eps=eps)
            return kernels.residual_ln_modulate(x, delta, gamma, scale, shift, eps=eps,
                                                out_dtype=run)

        h = modulated(None, None, first[:, 2], first[:, 4])
        for position, block in enumerate(blocks):
            index = self._block_index[id(block)]
            ada = state.ada[index]  # gamma1, gamma2, scale1+1, scale2+1, shift1, shift2
            out = self._attention(h, block, state, index, pos, rows, n, fp8)
            h = modulated(out, ada[:, 0], ada[:, 3], ada[:, 5])
            out = self._mlp(h, block, rows, n, fp8)
            if position + 1 < len(blocks):
                after = state.ada[self._block_index[id(blocks[position + 1])]]
                h = modulated(out, ada[:, 1], after[:, 2], after[:, 4])
            else:  # the head: float32, and nothing reads the residual afterwards
                head_ada = state.head_ada[branch]  # (R, 2, C): scale+1, shift
                h = kernels.residual_ln_modulate(x, out, ada[:, 1], head_ada[:, 0],
                                                 head_ada[:, 1], eps=eps,
                                                 out_dtype=torch.float32, write_x=False)
        return h

    def _attention(
        self, h: Activation, block: _Block, state: _Rows, index: int, pos: slice, rows: int,
        n: int, fp8: bool = False,
    ) -> torch.Tensor:
        """Attention of one block for (R, n) tokens: (R, n, C) projected output."""
        width, heads = self.cfg.width, self.cfg.heads
        qkv = self._linear(h, block, "qkv", fp8).view(rows, n, 3, heads, -1)
        if self._attention_kernel is not None:
            out = self._attention_kernel.qk_norm_attention(qkv, block.q_mult, self.dtype)
            return self._linear(out, block, "proj", fp8).view(rows, n, width)
        # q and k L2-normalised (norms in float32), q times its temperature: one pass for both
        if self._fused is not None:
            q, k = self._fused.qk_normalize(qkv, block.q_mult, out_dtype=self.dtype)
        else:
            qk = qkv[:, :, :2]  # (R, n, 2, H, D)
            factor = block.qk_mult / torch.linalg.vector_norm(
                qk, dim=-1, keepdim=True, dtype=torch.float32).clamp_min(_NORM_EPS)
            qk = torch.mul(qk, factor, out=torch.empty(qk.shape, dtype=qk.dtype,
                                                       device=qk.device))
            q, k = qk.unbind(2)  # (R, n, H, D) each
            q, k = q.to(self.dtype), k.to(self.dtype)  # (FP8 GEMMs may output bf16)
        v = qkv[:, :, 2].to(self.dtype)
        if self.stateful:  # VAR: this scale's slice of the static cache, attend to all so far
            keys, values = state.keys[index], state.values[index]
            keys[:, pos].copy_(k)
            values[:, pos].copy_(v)
            k, v = keys[:, : pos.stop], values[:, : pos.stop]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (R, H, ·, D) views
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        out = out.transpose(1, 2).reshape(rows, n, width)  # (R, n, C)
        return self._linear(out, block, "proj", fp8).view(rows, n, width)

    def _linear(self, h: Activation, block: _Block, name: str, fp8: bool) -> torch.Tensor:
        """``h·Wᵀ + b`` of one of the block's GEMMs, (..., N): in the run dtype, or with
        ``fp8`` from ``h``'s e4m3 rows (quantising a plain tensor first), as ``(M, N)``."""
        if not fp8 or block.fp8 is None or self.fp8_dtype is None:
            assert isinstance(h, torch.Tensor)
            return F.linear(h, getattr(block, f"{name}_w"), getattr(block, f"{name}_b"))
        q, scales = self._quantize(h) if isinstance(h, torch.Tensor) else h
        return fp8_linear(q, scales, block.fp8[name], self.fp8_dtype)

    def _quantize(self, x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-wise e4m3 of ``x`` (of ``gelu_tanh(x)``): one fused kernel, or the torch ops."""
        if self._fused is not None:
            return self._fused.quantize_rows(x.contiguous(), gelu=gelu)
        if gelu:
            x = F.gelu(x.float(), approximate="tanh")
        return quantize_rows(x)

    def _mlp(self, h: Activation, block: _Block, rows: int, n: int, fp8: bool) -> torch.Tensor:
        """``fc2(gelu_tanh(fc1(h)))`` for (R, n) tokens: (R, n, C)."""
        hidden: Activation
        if fp8:
            hidden = self._quantize(self._linear(h, block, "fc1", fp8), gelu=True)
        else:
            assert isinstance(h, torch.Tensor)
            hidden = self._fc1_gelu(h, block)
        return self._linear(hidden, block, "fc2", fp8).view(rows, n, -1)

    def _fc1_gelu(self, h: torch.Tensor, block: _Block) -> torch.Tensor:
        """``gelu_tanh(h·W1ᵀ + b1)``: on CUDA in the GEMM epilogue (cuBLASLt), else two ops."""
        if not self.fused_gelu:
            return F.gelu(F.linear(h, block.fc1_w, block.fc1_b), approximate="tanh")
        out = torch._addmm_activation(block.fc1_b, h.reshape(-1, h.shape[-1]), block.fc1_w.t(),
                                      use_gelu=True)
        return out.view(*h.shape[:-1], -1)

    def _head(self, x: torch.Tensor, head: _Head, ada: torch.Tensor) -> torch.Tensor:
        scale, shift = ada[:, None].unbind(2)  # (R, 1, C) float32 each
        x = x.float()
        h = torch.addcmul(shift, F.layer_norm(x, x.shape[-1:], eps=self.cfg.norm_eps), scale)
        return F.linear(h, head.out_w, head.out_b)  # (R, n, V)


def _fused_gelu_works(block: _Block, rows: int = 256) -> bool:
    """Does ``torch._addmm_activation(use_gelu=True)`` compute tanh-GELU here? (checked once).

    On CUDA it runs the bias + GELU in the cuBLASLt epilogue, saving a read and a write of the
    (tokens, 4C) hidden activations per block. It is a private op, so it is compared with the
    two-op form on this device and these weights before use, and skipped if it disagrees.
    """
    try:
        gen = torch.Generator(device=block.fc1_w.device).manual_seed(0)
        h = torch.randn(rows, block.fc1_w.shape[1], generator=gen, device=block.fc1_w.device,
                        dtype=block.fc1_w.dtype)
        fused = torch._addmm_activation(block.fc1_b, h, block.fc1_w.t(), use_gelu=True).float()
        plain = F.gelu(F.linear(h, block.fc1_w, block.fc1_b).float(), approximate="tanh")
        error = float((fused - plain).norm() / plain.norm().clamp_min(1e-30))
    except (RuntimeError, AttributeError) as err:
        logger.info("fused GELU epilogue unavailable (%s)", err)
        return False
    tolerance = 1e-5 if block.fc1_w.dtype == torch.float32 else 2e-2
    if not error < tolerance:
        logger.warning("fused GELU epilogue disagrees with gelu(tanh) (rel. error %.2e); "
                       "using two ops", error)
        return False
    return True


def _fused_kernels(
    requested: bool | None,
    device: torch.device,
    dtype: torch.dtype,
    residual_dtype: torch.dtype,
    eps: float,
    block: _Block,
    fp8: bool = False,
) -> ModuleType | None:
    """The :mod:`hmar_core.fast.fused` module if the fused path is to run, else ``None``.

    Auto (``requested is None``): CUDA devices with Triton importable, after one check of both
    kernels against the torch ops at this width and these dtypes (it also compiles them before
    any graph capture); any failure or disagreement is logged and the torch ops are used.
    ``True`` raises instead. With ``fp8`` the quantising kernels are checked too, against
    :func:`~hmar_core.fast.fp8.quantize_rows` of the torch ops' values.
    """
    def build() -> ModuleType:
        if importlib.util.find_spec("triton") is None:
            raise ImportError("triton is not installed")
        from . import fused

        error, fp8_error = _fused_error(fused, device, dtype, residual_dtype, eps, block, fp8)
        tolerance = 1e-5 if dtype == torch.float32 else 2e-2
        # FP8: a float32 rounding difference can move a value to the next e4m3 step (1/16)
        if not (error < tolerance and fp8_error < 2e-2):
            raise RuntimeError(f"fused kernels disagree with the torch ops (rel. error "
                               f"{error:.2e}, FP8 {fp8_error:.2e})")
        return fused

    def interpreted() -> bool:
        from . import fused

        return fused.INTERPRETED

    return checked_kernel(requested, device, "fused kernels", "torch ops", build, interpreted)


def _attention_kernel(requested: bool | None, device: torch.device, dtype: torch.dtype,
                      heads: int, head_dim: int) -> ModuleType | None:
    """The :mod:`hmar_core.fast.attention` module if its kernel is to run, else ``None``
    (:func:`~hmar_core.fast.checked.checked_kernel`'s rule). The check compares it with the
    torch ops at this head layout and dtype for a single token and a partial tile (each pass
    shape compiles its own variant later, in the graph cache's eager warm-up runs)."""
    def build() -> ModuleType:
        if importlib.util.find_spec("triton") is None:
            raise ImportError("triton is not installed")
        from . import attention

        gen = torch.Generator(device=device).manual_seed(0)
        error = 0.0
        for tokens in (1, 37):
            qkv = torch.randn((2, tokens, 3, heads, head_dim), generator=gen,
                              device=device).to(dtype)
            q_mult = torch.rand((heads,), generator=gen, device=device) * 10 + 1
            got = attention.qk_norm_attention(qkv, q_mult, dtype).float()
            want = attention.reference_qk_norm_attention(qkv, q_mult, dtype).float()
            error = max(error, ((got - want).abs().max() / want.abs().max()).item())
        if not error < (1e-5 if dtype == torch.float32 else 2e-2):
            raise RuntimeError(f"attention kernel disagrees with the torch ops (rel. error "
                               f"{error:.2e})")
        return attention

    def interpreted() -> bool:
        from . import attention

        return attention.INTERPRETED

    return checked_kernel(requested, device, "attention kernel", "q/k norm + SDPA", build,
                          interpreted)


def _fused_error(
    fused: ModuleType,
    device: torch.device,
    dtype: torch.dtype,
    residual_dtype: torch.dtype,
    eps: float,
    block: _Block,
    fp8: bool = False,
    rows: int = 2,
    tokens: int = 5,
) -> tuple[float, float]:
    """Largest relative errors of the fused kernels vs the torch ops on random inputs: of
    the plain kernels, and of the quantising ones (with ``fp8``; else 0)."""
    width = block.proj_w.shape[0]
    heads = block.q_mult.shape[0]
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=device).to(dtype)

    x, delta = randn(rows, tokens, width, dtype=residual_dtype), randn(rows, tokens, width,
                                                                      dtype=dtype)
    gamma, scale, shift = randn(rows, width), randn(rows, width), randn(rows, width)
    errors = []

    def compare(got: torch.Tensor, want: torch.Tensor) -> None:
        want = want.float()
        errors.append(float((got.float() - want).norm() / want.norm().clamp_min(1e-30)))

    def modulate(value: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(value.float(), (width,), eps=eps)
        return torch.addcmul(shift[:, None], normed, scale[:, None])

    compare(fused.ln_modulate(x, scale, shift, eps=eps, out_dtype=dtype), modulate(x))
    new_x = _addcmul(x, delta, gamma[:, None], residual_dtype)
    for out_dtype, write_x in ((dtype, True), (torch.float32, False)):
        x_copy = x.clone()
        h = fused.residual_ln_modulate(x_copy, delta, gamma, scale, shift, eps=eps,
                                       out_dtype=out_dtype, write_x=write_x)
        compare(h, modulate(new_x))
        if write_x:
            compare(x_copy, new_x)
    qkv = randn(rows, tokens, 3 * width, dtype=dtype).view(rows, tokens, 3, heads, -1)
    q, k = fused.qk_normalize(qkv, block.q_mult)
    compare(q, F.normalize(qkv[:, :, 0].float(), dim=-1) * block.q_mult[:, None])
    compare(k, F.normalize(qkv[:, :, 1].float(), dim=-1))
    plain = max(errors)
    if not fp8:
        return plain, 0.0
    errors.clear()

    def dequantized(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return pair[0].float() * pair[1]

    compare(dequantized(fused.residual_ln_modulate_fp8(x.clone(), delta, gamma, scale, shift,
                                                       eps=eps)),
            dequantized(quantize_rows(modulate(new_x))))
    compare(dequantized(fused.quantize_rows(delta, gelu=True)),
            dequantized(quantize_rows(F.gelu(delta.float(), approximate="tanh"))))
    return plain, max(errors)


def _addcmul(
    base: torch.Tensor, x: torch.Tensor, factor: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``base + x * factor`` (broadcast) computed in float32, written as ``dtype``, one kernel.

    ``factor`` (and ``base`` when it is a modulation) are float32 (R, 1, C) rows, so the AdaLN
    ``1 + scale`` is never rounded to bf16.
    """
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    return torch.addcmul(base, x, factor, out=out)
