"""The HMAR sampler: next-scale steps, masked refinement, CFG, top-k/top-p, constraints.

Shape legend: B = batch, n = tokens of the current scale (pn²), V = vocab, C = latent channels.

:func:`sample` takes the network as a callable (:class:`ScaleModel`), the tokenizer's quantiser
for the pyramid math, a :class:`~hmar_core.config.SamplerConfig`, and an explicit
``torch.Generator`` — the only source of randomness. Random draws happen in the official order
(one multinomial over the (B·n, V) probabilities per next-scale step and per mask step, after one
draw of the labels when they are not given), so the same seed gives the official tokens.

Editing is this same loop with a :class:`ScaleConstraint`: after every sampling step, kept
positions are overwritten with the source tokens and get infinite confidence, so refinement never
re-masks them (spec §7, style item 5). Plain generation is the constraint-free case.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from . import pyramid
from .config import SamplerConfig
from .schedules import Schedule, cfg_weight, remask_counts

__all__ = [
    "MULTINOMIAL",
    "Branch",
    "Drawer",
    "Region",
    "SampleOutput",
    "ScaleConstraint",
    "ScaleInput",
    "ScaleModel",
    "ScaleState",
    "Weight",
    "eager",
    "guided_logits",
    "lowest_confidence",
    "multinomial_choose",
    "sample",
    "sample_from_logits",
    "top_k_top_p_filter",
]

logger = logging.getLogger(__name__)


Branch = Literal["ns", "mask"]
#: A CFG weight t: a number, or the (2,) float32 tensor ``[1 + t, t]`` on the model's device
#: (both factors rounded from float64, as the number would be), which captured graphs read
#: as an input instead of baking the number in.
Weight = float | torch.Tensor


@dataclass(frozen=True)
class ScaleInput:
    """What the network sees of one scale (B rows, n = pn² tokens, C latent channels).

    Attributes:
        scale: the scale index.
        x_ns: (B, n, C) next-scale input; ``None`` for scale 0 (the class token).
        x_mask, masked: the mask branch's (B, n, C) own-scale input and (B, n) bool positions
            that see [MASK]; ``None`` for the next-scale branch.
        branch: ``"ns"`` (next-scale prediction) or ``"mask"`` (masked refinement).
    """

    scale: int
    x_ns: torch.Tensor | None
    x_mask: torch.Tensor | None = None
    masked: torch.Tensor | None = None
    branch: Branch = "ns"

    def twice(self) -> ScaleInput:
        """Both CFG halves: every tensor stacked on itself along the batch."""
        def twice(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else torch.cat([x, x])

        return ScaleInput(self.scale, twice(self.x_ns), twice(self.x_mask), twice(self.masked),
                          self.branch)


class ScaleModel(Protocol):
    """What the sampler needs from the network: ``model_fn(labels (B,), ScaleInput) -> (B, n, V)
    float32`` logits of one scale."""

    def __call__(self, labels: torch.Tensor, inputs: ScaleInput) -> torch.Tensor: ...


class Quantizer(Protocol):
    """What the sampler needs from the tokenizer (``MultiScaleQuantizer`` fits)."""

    @property
    def codebook(self) -> torch.Tensor: ...

    def phis(self) -> list[Callable[[torch.Tensor], torch.Tensor]]: ...


@dataclass(frozen=True)
class Drawer:
    """How a sampling step turns logits into tokens, split so that only ``noise`` is random.

    The pure parts (``filter`` and ``choose`` given the noise) can then run inside a captured
    :data:`Region` while the random draw stays outside it, in the generator's order.

    Attributes:
        filter: ``(logits (B, n, V), top_k, top_p) -> filtered logits`` (pure).
        noise: ``(shape, device, generator) -> noise`` for one step, or ``None`` when
            ``choose`` draws by itself.
        choose: ``(probs (B, n, V), noise, generator) -> (B, n) int64`` tokens; pure when it
            is given noise.
    """

    filter: Callable[[torch.Tensor, int, float], torch.Tensor]
    noise: Callable[[tuple[int, ...], torch.device, torch.Generator], torch.Tensor | None]
    choose: Callable[[torch.Tensor, torch.Tensor | None, torch.Generator], torch.Tensor]


class Region(Protocol):
    """Runs a pure function of tensors, e.g. replayed from a CUDA graph captured per ``key``.

    ``region(key, fn, inputs)`` returns ``fn(*inputs)``; ``key`` holds everything besides
    the inputs that decides shapes and code path. Outputs may be buffers that the next call
    with the same key overwrites.
    """

    def __call__(self, key: Hashable, fn: Callable[..., Any],
                 inputs: Sequence[torch.Tensor | None]) -> Any: ...


def eager(key: Hashable, fn: Callable[..., Any], inputs: Sequence[torch.Tensor | None]) -> Any:
    """The plain :class:`Region`: ``fn(*inputs)``."""
    del key
    return fn(*inputs)


class ScaleConstraint(Protocol):
    """An edit: which tokens of each scale are kept from a source pyramid."""

    def keep(self, scale: int) -> torch.Tensor | None:
        """(B, n) bool, True = force the source token; ``None`` = keep nothing."""
        ...

    def source(self, scale: int) -> torch.Tensor:
        """(B, n) int64 source tokens of that scale."""
        ...


@dataclass
class ScaleState:
    """The sampler's state after committing scale ``scale`` (enough to resume after it)."""

    scale: int
    tokens: list[torch.Tensor]
    f_hat: torch.Tensor
    confidence: torch.Tensor


@dataclass
class SampleOutput:
    """Result of :func:`sample`.

    Attributes:
        tokens: the token pyramid, list of (B, pn²) int64.
        f_hat: final (B, C, H, W) latent.
        confidence: per scale, (B, pn²) probability of each final token under the distribution
            it was drawn from (kept tokens of an edit: 1.0).
        labels: (B,) the class ids used (drawn when not given).
        steps: per scale, the tokens after the next-scale step and after each mask step.
    """

    tokens: list[torch.Tensor]
    f_hat: torch.Tensor
    confidence: list[torch.Tensor]
    labels: torch.Tensor
    steps: list[list[torch.Tensor]] = field(default_factory=list)


# --------------------------------------------------------------------------------- pure steps
def top_k_top_p_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k, then outside the top-p nucleus, to -inf (new tensor).

    top-k keeps every logit ≥ the k-th largest of its row (ties kept); top-p (applied to the
    top-k-filtered logits) drops the smallest entries whose cumulative probability is
    ≤ 1 - top_p and always keeps the largest. ``top_k = 0`` / ``top_p = 0`` disable each.
    """
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, dim=-1, largest=True, sorted=False).values.amin(-1, keepdim=True)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def multinomial_choose(
    probs_BnV: torch.Tensor, noise: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """One token per position with one ``torch.multinomial`` call over (B·n, V) (official)."""
    del noise
    batch, n, vocab = probs_BnV.shape
    idx = torch.multinomial(probs_BnV.reshape(-1, vocab), 1, replacement=True,
                            generator=generator)
    return idx.view(batch, n)


def _no_noise(shape: tuple[int, ...], device: torch.device,
              generator: torch.Generator) -> None:
    del shape, device, generator


#: The official draw: top-k/top-p over the sorted logits, then ``multinomial``.
MULTINOMIAL = Drawer(top_k_top_p_filter, _no_noise, multinomial_choose)


def sample_from_logits(
    logits_BnV: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator,
    drawer: Drawer = MULTINOMIAL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Filter, then draw one token per position (by default with one multinomial call).

    Returns:
        tokens (B, n) int64 and probs (B, n, V), the distribution they were drawn from.
    """
    probs = drawer.filter(logits_BnV, top_k, top_p).softmax(dim=-1)
    noise = drawer.noise(tuple(probs.shape), probs.device, generator)
    return drawer.choose(probs, noise, generator), probs


def lowest_confidence(confidence_Bn: torch.Tensor, counts_B: torch.Tensor) -> torch.Tensor:
    """Per row, mark the ``counts_B[b]`` least confident positions → bool (B, n)."""
    order = confidence_Bn.argsort(dim=-1)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(
        order.shape[-1], device=order.device).expand_as(order))
    return ranks < counts_B[:, None]


def guided_logits(
    model_fn: ScaleModel,
    labels: torch.Tensor,
    null_class: int,
    weight: Weight,
    inputs: ScaleInput,
    *,
    pair: bool = False,
) -> torch.Tensor:
    """Classifier-free guidance: ``(1 + t)·cond - t·uncond``.

    ``weight`` is t, or the (2,) float32 tensor ``[1 + t, t]`` (see :data:`Weight`). When t is
    the number 0 only the conditional half runs (the result is the same), unless ``pair``
    asks for both halves anyway (stateful models whose KV cache needs a constant batch).
    """
    guided = getattr(model_fn, "guided", None)
    if guided is not None:  # the model runs both halves itself (e.g. the fast runner)
        return guided(labels, null_class, weight, inputs)
    if not isinstance(weight, torch.Tensor) and weight == 0.0 and not pair:
        return model_fn(labels, inputs)
    both = torch.cat([labels, torch.full_like(labels, null_class)])
    cond, uncond = model_fn(both, inputs.twice()).chunk(2)
    if isinstance(weight, torch.Tensor):
        return cond * weight[0] - uncond * weight[1]
    return (1 + weight) * cond - weight * uncond


# ------------------------------------------------------------------------------ the sampler
def sample(
    model_fn: ScaleModel,
    quantizer: Quantizer,
    patch_nums: Sequence[int],
    cfg: SamplerConfig,
    schedule: Schedule,
    *,
    labels: torch.Tensor,
    null_class: int,
    generator: torch.Generator,
    constraint: ScaleConstraint | None = None,
    on_scale: Callable[[ScaleState], None] | None = None,
    resume: ScaleState | None = None,
    record_steps: bool = False,
    drawer: Drawer | None = None,
    upsample: pyramid.Upsample | None = None,
    region: Region | None = None,
) -> SampleOutput:
    """Generate a token pyramid scale by scale.

    Args:
        model_fn: the network as a callable (see :class:`ScaleModel`).
        quantizer: codebook and phi convs of the tokenizer.
        patch_nums: the pyramid.
        cfg: guidance / filtering settings.
        schedule: a validated mask schedule (one entry per scale).
        labels: (B,) int64 class ids (the caller draws them when the user gave none).
        null_class: the unconditional class id.
        generator: the only source of randomness.
        constraint: kept tokens per scale (editing); ``None`` for plain generation.
        on_scale: called with the :class:`ScaleState` after every committed scale.
        resume: a state from an earlier run; sampling continues at ``resume.scale + 1``.
        record_steps: keep the tokens after every step in ``SampleOutput.steps``.
        drawer: how logits become tokens (default :data:`MULTINOMIAL`, the official draw);
            the fast path passes a fused filter and a Gumbel-max choice with the same
            distribution and random stream.
        upsample: the bicubic upsampling of the pyramid (default
            :func:`~hmar_core.pyramid.bicubic_up`, the official op); the fast path passes
            :class:`~hmar_core.pyramid.MatrixBicubicUp` (same weights, faster on GPUs).
        region: runs the pure part of every step (network pass, filter, choice given the
            noise, re-masking, the pyramid update); the fast path replays them from CUDA
            graphs, with the CFG weights as tensors. Default: eager, weights as numbers.

    Returns:
        A :class:`SampleOutput`.
    """
    stateful = bool(getattr(model_fn, "stateful", False))
    if cfg.cfg > 0 and not stateful and bool((labels == null_class).all()):
        # Guidance between two identical conditions is the identity ((1 + t)·u - t·u = u):
        # unconditional runs (plain in/outpainting) skip the second half. One host read.
        cfg = dataclasses.replace(cfg, cfg=0.0)
    if resume is not None and stateful:
        raise ValueError("resume is not supported for stateful (VAR) models: their KV cache is "
                         "not part of ScaleState")
    codebook = quantizer.codebook
    num_scales, size = len(patch_nums), patch_nums[-1]
    run = _Run(model_fn, drawer or MULTINOMIAL, region or eager, region is not None, cfg,
               labels, null_class, generator, stateful and cfg.cfg > 0, codebook,
               quantizer.phis(), tuple(patch_nums), upsample or pyramid.bicubic_up)
    f_hat, tokens, confidences, start = _initial_state(resume, codebook, labels.shape[0], size)
    keeps = [constraint.keep(si) if constraint is not None else None for si in range(num_scales)]
    fully_kept = _fully_kept(keeps, start)  # one host read for all scales, none in the loop
    steps: list[list[torch.Tensor]] = []
    x_ns = None if start == 0 else pyramid.next_scale_input(f_hat, patch_nums[start])

    for si in range(start, num_scales):
        keep = keeps[si]
        source = constraint.source(si) if keep is not None else None  # type: ignore[union-attr]
        if fully_kept[si]:
            # Entirely kept (e.g. "strength" scales): no random draws, and no network pass
            # unless the model is stateful (VAR), whose KV cache needs this scale.
            if stateful:
                guided_logits(model_fn, labels, null_class, cfg_weight(cfg.cfg, si, num_scales),
                              ScaleInput(si, x_ns), pair=run.pair)
            idx = source
            confidence = torch.ones(idx.shape, dtype=codebook.dtype, device=idx.device)
            scale_steps = [idx]
        else:
            idx, confidence = run.next_scale(si, x_ns, keep, source)
            scale_steps = [run.kept(idx) if record_steps else idx]
            remaining = remask_counts(schedule[si]) if patch_nums[si] > 1 else []
            if remaining:
                idx, confidence = run.refine(si, idx, confidence, keep, remaining, f_hat,
                                             scale_steps if record_steps else None)
            if keep is not None:
                confidence = torch.where(keep, torch.ones_like(confidence), confidence)
        f_hat, x_ns = run.accumulate(si, idx, f_hat)
        if on_scale is not None:  # the callback may keep the state (edit sessions do)
            idx, confidence, f_hat = run.kept(idx), run.kept(confidence), run.kept(f_hat)
        tokens.append(idx)
        confidences.append(confidence)
        if record_steps:
            steps.append(scale_steps)
        if on_scale is not None:
            on_scale(ScaleState(si, list(tokens), f_hat, confidence))
    if on_scale is None and run.static:
        tokens, confidences = [t.clone() for t in tokens], [c.clone() for c in confidences]
        f_hat = f_hat.clone()
    return SampleOutput(tokens, f_hat, confidences, labels, steps)


@dataclass(frozen=True)
class _Run:
    """The constants of one sampling run and its three kinds of step, each run through the
    region as a pure function of its tensors (the random noise is drawn outside)."""

    model_fn: ScaleModel
    drawer: Drawer
    region: Region
    static: bool  # region outputs are reused buffers (clone what outlives the run)
    cfg: SamplerConfig
    labels: torch.Tensor
    null_class: int
    generator: torch.Generator
    pair: bool
    codebook: torch.Tensor
    phis: list[pyramid.Phi]
    patch_nums: tuple[int, ...]
    upsample: pyramid.Upsample
    factors: dict[tuple[int, Branch], torch.Tensor] = field(default_factory=dict)

    def kept(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor``, copied when it may be a region's reused buffer."""
        return tensor.clone() if self.static else tensor

    def weight(self, si: int, branch: Branch) -> tuple[Weight, torch.Tensor | None]:
        """The CFG weight of a step as the network takes it, and as a region input.

        A number 0 stays a number (only the conditional half runs, unless paired); with a
        region every other weight is a (2,) tensor ``[1 + t, t]``, so that captured graphs
        read it instead of baking it in (one small fill per step, no host read).
        """
        cfg = self.cfg
        t = (cfg_weight(cfg.cfg, si, len(self.patch_nums)) if branch == "ns"
             else cfg.cfg * cfg.mask_cfg_ratio)
        if not self.static or (t == 0.0 and not self.pair):
            return t, None
        factors = self.factors.get((si, branch))
        if factors is None:
            factors = torch.empty(2, dtype=torch.float32, device=self.labels.device)
            factors[0].fill_(1.0 + t)
            factors[1].fill_(t)
            self.factors[(si, branch)] = factors
        return factors, factors

    def noise(self, batch: int, n: int) -> torch.Tensor | None:
        return self.drawer.noise((batch, n, self.codebook.shape[0]), self.labels.device,
                                 self.generator)

    def _key(self, *parts: object) -> tuple[object, ...]:
        cfg = self.cfg
        return ("sample", *parts, self.labels.shape[0], cfg.top_k, cfg.top_p, self.pair)

    def _draw(self, logits: torch.Tensor, noise: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Filter, choose: tokens (B, n) and the probability each had."""
        probs = self.drawer.filter(logits, self.cfg.top_k, self.cfg.top_p).softmax(dim=-1)
        idx = self.drawer.choose(probs, noise, self.generator)
        return idx, probs.gather(-1, idx[..., None])[..., 0]

    def next_scale(self, si: int, x_ns: torch.Tensor | None, keep: torch.Tensor | None,
                   source: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The one-shot prediction of scale ``si``: tokens (kept ones forced) and the
        confidence of the drawn ones."""
        weight, weight_in = self.weight(si, "ns")
        batch, n = self.labels.shape[0], self.patch_nums[si] ** 2

        def step(x_ns: torch.Tensor | None, noise: torch.Tensor | None,
                 weight_in: torch.Tensor | None, keep: torch.Tensor | None,
                 source: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            logits = guided_logits(self.model_fn, self.labels, self.null_class,
                                   weight if weight_in is None else weight_in,
                                   ScaleInput(si, x_ns), pair=self.pair)
            idx, confidence = self._draw(logits, noise)
            if keep is not None:
                idx = torch.where(keep, source, idx)  # type: ignore[arg-type]
            return idx, confidence

        noise = self.noise(batch, n)
        key = self._key("ns", si, weight_in is None, keep is None)
        return self.region(key, step, (x_ns, noise, weight_in, keep, source))

    def refine(
        self, si: int, idx: torch.Tensor, confidence: torch.Tensor, keep: torch.Tensor | None,
        remaining: list[int], f_hat: torch.Tensor, record: list[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked refinement of one scale: re-predict the least confident tokens, step by step.

        ``remaining[j]`` tokens are masked before step j (official counts). With a constraint,
        counts are scaled to each sample's number of free positions (at least one while any
        is free) and kept positions rank as infinitely confident, so they are never masked.
        """
        pn = self.patch_nums[si]
        n = pn * pn
        if keep is None:
            free_B = torch.full_like(idx[:, 0], n)
        else:
            free_B = (~keep).sum(-1)
            confidence = confidence.masked_fill(keep, float("inf"))
        weight, weight_in = self.weight(si, "mask")

        def step(idx: torch.Tensor, confidence: torch.Tensor, masked: torch.Tensor | None,
                 f_hat: torch.Tensor, free_B: torch.Tensor, count: torch.Tensor,
                 noise: torch.Tensor | None, weight_in: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            counts_B = _scaled_counts(count, n, free_B)
            if masked is None:
                masked = lowest_confidence(confidence, counts_B)
            else:  # keep masked only the least confident of the currently masked positions
                masked = masked & lowest_confidence(
                    confidence.masked_fill(~masked, float("inf")), counts_B)
            x_ns, x_mask = pyramid.mask_step_input(
                f_hat, pyramid.embed_tokens(idx, self.codebook, pn), self.phis[si], pn,
                self.upsample)
            logits = guided_logits(self.model_fn, self.labels, self.null_class,
                                   weight if weight_in is None else weight_in,
                                   ScaleInput(si, x_ns, x_mask, masked, "mask"))
            new_idx, new_confidence = self._draw(logits, noise)
            return (masked, torch.where(masked, new_idx, idx),
                    torch.where(masked, new_confidence, confidence))

        masked = None
        for count in remaining:
            count_t = torch.full((), count, dtype=free_B.dtype, device=free_B.device)
            noise = self.noise(idx.shape[0], n)
            key = self._key("mask", si, weight_in is None, masked is None)
            masked, idx, confidence = self.region(
                key, step, (idx, confidence, masked, f_hat, free_B, count_t, noise, weight_in))
            if record is not None:
                record.append(self.kept(idx))
        if keep is not None:
            confidence = confidence.masked_fill(keep, 1.0)
        return idx, confidence

    def accumulate(self, si: int, idx: torch.Tensor, f_hat: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add scale ``si``'s tokens to f_hat; the next scale's input (``None`` after the
        last)."""
        last = si == len(self.patch_nums) - 1

        def step(idx: torch.Tensor, f_hat: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
            h_BChw = pyramid.embed_tokens(idx, self.codebook, self.patch_nums[si])
            f_hat = pyramid.accumulate(f_hat, h_BChw, self.phis[si], last, self.upsample)
            x_ns = None if last else pyramid.next_scale_input(f_hat, self.patch_nums[si + 1])
            return f_hat, x_ns

        return self.region(("sample", "accumulate", si, idx.shape[0]), step, (idx, f_hat))


def _initial_state(
    resume: ScaleState | None, codebook: torch.Tensor, batch: int, size: int
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], int]:
    """``(f_hat, tokens, confidences, first scale to sample)``: empty, or after ``resume``."""
    if resume is None:
        return codebook.new_zeros(batch, codebook.shape[1], size, size), [], [], 0
    confidences = [torch.ones_like(t, dtype=codebook.dtype) for t in resume.tokens]
    confidences[-1] = resume.confidence
    return resume.f_hat, list(resume.tokens), confidences, resume.scale + 1


def _fully_kept(keeps: Sequence[torch.Tensor | None], start: int) -> list[bool]:
    """Per scale: does the constraint keep every token? One host read for all scales."""
    flags = [False] * len(keeps)
    checks = [(si, keep.all()) for si, keep in enumerate(keeps)
              if keep is not None and si >= start]
    if checks:
        values = torch.stack([flag for _, flag in checks]).tolist()
        for (si, _), value in zip(checks, values):
            flags[si] = bool(value)
    return flags


def _scaled_counts(count: torch.Tensor, n: int, free_B: torch.Tensor) -> torch.Tensor:
    """Official ``count`` (0-dim int64) when all n positions are free; else scaled to the
    free positions (at least one while any is free)."""
    scaled = torch.ceil(free_B.to(torch.float64) * count / n).to(free_B.dtype)
    return torch.where(free_B == n, count, scaled.clamp(max=free_B))
