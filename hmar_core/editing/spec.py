"""Training-free editing: the same sampler, constrained by an :class:`EditSpec`.

Shape legend: B = batch (variants), S = the model's image side, n = pn² tokens of a scale,
P = side of the final token grid.

An edit encodes the source image to its token pyramid, turns one pixel mask into a regenerate
mask per scale (:func:`~hmar_core.editing.masks.token_masks`) and runs
:func:`hmar_core.sampler.sample` with the spec as its
:class:`~hmar_core.sampler.ScaleConstraint`: kept tokens are forced to the source and get
infinite confidence, so refinement only touches the regenerate positions (spec §7, style item 5).
Plain generation is an edit whose spec keeps nothing.

**Schedule** (:func:`edit_schedule`): a scale where nothing is kept uses the plain generation
schedule (so a full-mask edit is exactly :meth:`Pipeline.generate`); an entirely kept scale
runs no network; a partly kept scale gets ``steps`` masked-refinement steps (capped by its
number of free tokens) that first re-predict *all* free tokens from the kept context, then
finalise them on a cosine curve. The sampler scales the counts to each sample's free
positions (at least one token per step), so a small hole still gets several steps.

**Strength** k: scales ``< k`` are kept entirely from the source (k = 0: the region is
regenerated from scratch; larger k keeps the original's colours and layout, img2img-like).

**Randomness**: one ``torch.Generator`` seeded with ``seed`` drives the whole edit in the
sampler's order, exactly like :meth:`Pipeline.generate` (whose stream is untouched). The
optional ``fine_seed`` re-seeds that generator just before scale ``fine_from`` ("re-roll the
details, keep the layout"). Because the generator state is a pure function of the settings up
to a scale, :class:`~hmar_core.editing.session.EditSession` stores it with every scale's
:class:`ScaleState` and restores it on resume, which makes a resumed run bit-identical to the
from-scratch run with the same settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from typing_extensions import TypedDict

from ..schedules import Schedule
from .host import to_device
from .masks import token_masks

__all__ = ["DEFAULT_EDIT_STEPS", "FIT_MODES", "EditFields", "EditOptions", "EditSpec",
           "edit_schedule"]

DEFAULT_EDIT_STEPS = 2
FIT_MODES = ("whole", "masked")


def _check_int(name: str, value: object, minimum: int = 0, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


#: Upper bounds that keep one request from asking for unbounded memory.
MAX_FEATHER = 1024
MAX_VARIANTS = 64


@dataclass(frozen=True)
class EditOptions:
    """Everything an edit needs besides the image and the mask.

    Attributes:
        class_id: target class, or ``None`` for the null class (plain in-filling).
        seed: generator seed (``None``: a fresh random one, reported in the result).
        steps: refinement steps: the generation schedule's ``steps`` knob for fully
            regenerated scales and the step count of partly kept scales (``None``: the
            pipeline's default schedule, and its sampler's ``steps`` for partly kept scales,
            :data:`DEFAULT_EDIT_STEPS` when it has none; 0: no refinement).
        cfg, top_k, top_p, mask_cfg_ratio: sampler overrides (``None``: pipeline defaults).
        strength: number of coarse scales kept entirely from the source (0 … num_scales).
        revise: class edits only (``class_id`` set, ``strength`` > 0): of the ``strength``
            coarse scales, keep only the source tokens the target class does not disfavour and
            regenerate the rest, inside the edit region: a token is regenerated where
            ``log p(token | class) - log p(token | null)`` (teacher-forced next-scale logits of
            the source) is below this many nats (:mod:`.revise`). ``None``: kept whole.
        grow: dilation of the final token mask, in tokens.
        coarse_threshold: covered fraction above which a coarse cell regenerates.
        feather: width in pixels of the soft blend outside the mask.
        fit: ``"whole"`` (resize the whole image to the model, padded square) or
            ``"masked"`` (crop a square around the mask plus ``padding``, paste back).
        padding: pixels around the mask's bounding box in ``"masked"`` fit.
        num_variants: samples in one batch (variations).
        fine_from: first "fine" scale for ``fine_seed`` / ``fine_steps``.
        fine_seed: re-seed the generator with this before scale ``fine_from`` (re-roll the
            details, keep the layout).
        fine_steps: ``steps`` for scales ``>= fine_from`` (default: ``steps``).
    """

    class_id: int | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    mask_cfg_ratio: float | None = None
    strength: int = 0
    revise: float | None = None
    grow: int = 1
    coarse_threshold: float = 0.5
    feather: int = 8
    fit: str = "whole"
    padding: int = 32
    num_variants: int = 1
    fine_from: int | None = None
    fine_seed: int | None = None
    fine_steps: int | None = None

    def __post_init__(self) -> None:
        _check_int("class_id", self.class_id, allow_none=True)
        _check_int("steps", self.steps, allow_none=True)
        for name in ("strength", "grow", "feather", "padding"):
            _check_int(name, getattr(self, name))
        _check_int("num_variants", self.num_variants, minimum=1)
        if self.feather > MAX_FEATHER:
            raise ValueError(f"feather must be at most {MAX_FEATHER} px, got {self.feather}")
        if self.num_variants > MAX_VARIANTS:
            raise ValueError(f"num_variants must be at most {MAX_VARIANTS}, "
                             f"got {self.num_variants}")
        if self.fit not in FIT_MODES:
            raise ValueError(f"fit must be one of {FIT_MODES}, got {self.fit!r}")
        if self.revise is not None and (isinstance(self.revise, bool)
                                        or not isinstance(self.revise, (int, float))
                                        or not math.isfinite(self.revise)):
            raise ValueError(f"revise must be a finite number of nats or None, "
                             f"got {self.revise!r}")
        if not 0.0 <= self.coarse_threshold < 1.0:
            raise ValueError(f"coarse_threshold must be in [0, 1), got {self.coarse_threshold}")
        if self.fine_from is None and (self.fine_seed is not None or self.fine_steps is not None):
            raise ValueError("fine_seed / fine_steps need fine_from (the first fine scale)")
        for name in ("fine_from", "fine_seed", "fine_steps"):
            _check_int(name, getattr(self, name), allow_none=True)

    def steps_at(self, scale: int) -> int | None:
        """The ``steps`` knob that applies at ``scale`` (``fine_steps`` from ``fine_from`` on)."""
        if self.fine_from is not None and self.fine_steps is not None and scale >= self.fine_from:
            return self.fine_steps
        return self.steps


class EditFields(TypedDict, total=False):
    """:class:`EditOptions`' fields as keyword arguments (``pipe.inpaint(..., seed=3)``).

    The editing methods take ``**fields: Unpack[EditFields]`` and build one
    :class:`EditOptions` from them, so their keywords cannot drift from the options
    (``tests/test_engines.py`` checks that the two name the same fields).
    """

    class_id: int | None
    seed: int | None
    steps: int | None
    cfg: float | None
    top_k: int | None
    top_p: float | None
    mask_cfg_ratio: float | None
    strength: int
    revise: float | None
    grow: int
    coarse_threshold: float
    feather: int
    fit: str
    padding: int
    num_variants: int
    fine_from: int | None
    fine_seed: int | None
    fine_steps: int | None


@dataclass(frozen=True)
class EditSpec:
    """The constraint of one edit (implements :class:`~hmar_core.sampler.ScaleConstraint`).

    Attributes:
        source_tokens: per scale (B, n) int64, the source image's token pyramid.
        regenerate: per scale (B, n) bool, True = sample here (derived from one pixel mask).
        labels: (B,) int64 class ids (target class, or the null class for in-filling).
        strength: scales ``< strength`` are kept entirely, whatever ``regenerate`` says.
    """

    source_tokens: tuple[torch.Tensor, ...]
    regenerate: tuple[torch.Tensor, ...]
    labels: torch.Tensor
    strength: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "source_tokens", tuple(self.source_tokens))
        object.__setattr__(self, "regenerate", tuple(self.regenerate))
        if len(self.source_tokens) != len(self.regenerate) or not self.source_tokens:
            raise ValueError(f"{len(self.source_tokens)} scales of tokens but "
                             f"{len(self.regenerate)} scales of masks")
        batch = self.labels.shape[0]
        for si, (tokens, regen) in enumerate(zip(self.source_tokens, self.regenerate)):
            if regen.dtype != torch.bool or regen.shape != tokens.shape or tokens.shape[0] != batch:
                raise ValueError(f"scale {si}: mask {regen.dtype} {tuple(regen.shape)} does not "
                                 f"match tokens {tuple(tokens.shape)} for batch {batch}")
        _check_int("strength", self.strength)
        if self.strength > len(self.source_tokens):
            raise ValueError(f"strength must be in [0, {len(self.source_tokens)}], "
                             f"got {self.strength}")

    @classmethod
    def empty(cls, patch_nums: tuple[int, ...], labels: torch.Tensor) -> EditSpec:
        """A spec that keeps nothing: sampling with it is plain generation."""
        shapes = [(labels.shape[0], pn * pn) for pn in patch_nums]
        return cls(tuple(torch.zeros(s, dtype=torch.int64, device=labels.device) for s in shapes),
                   tuple(torch.ones(s, dtype=torch.bool, device=labels.device) for s in shapes),
                   labels)

    @classmethod
    def from_pixel_mask(
        cls,
        source_tokens: Sequence[torch.Tensor],
        pixel_mask_BSS: torch.Tensor,
        labels: torch.Tensor,
        patch_nums: Sequence[int],
        *,
        strength: int = 0,
        grow: int = 1,
        coarse_threshold: float = 0.5,
    ) -> EditSpec:
        """The spec of one pixel mask at model resolution (rule: :mod:`hmar_core.editing.masks`).

        Args:
            source_tokens: per scale (B, n) int64, e.g. ``pipe.backend.encode(images)``.
            pixel_mask_BSS: (B, S, S) bool, True = regenerate.
            labels: (B,) int64 class ids.
            patch_nums: the pyramid.
            strength, grow, coarse_threshold: see :class:`EditOptions`.
        """
        regenerate = token_masks(pixel_mask_BSS, patch_nums, grow=grow,
                                 coarse_threshold=coarse_threshold)
        device = source_tokens[0].device
        if pixel_mask_BSS.device == device:
            return cls(tuple(source_tokens), tuple(regenerate), labels, strength)
        # a host mask (what the editor passes): the masks, their complements and the summary
        # are made here and reach the device in one copy, not as ~60 small launches and a read
        count = len(regenerate)
        moved = to_device([*regenerate, *(~regen for regen in regenerate)], device)
        spec = cls(tuple(source_tokens), tuple(moved[:count]), labels, strength)
        spec.__dict__["_summary"] = _summarize(regenerate)  # fills the cached properties
        spec.__dict__["_kept"] = tuple(moved[count:])
        return spec

    @property
    def num_scales(self) -> int:
        return len(self.source_tokens)

    @cached_property
    def _summary(self) -> tuple[tuple[bool, bool, int], ...]:
        """Per scale ``(nothing regenerated, all regenerated, most free positions of a sample)``
        before the strength applies, read from the device once."""
        return _summarize(self.regenerate)

    @cached_property
    def _kept(self) -> tuple[torch.Tensor, ...]:
        """Per scale ``~regenerate`` (made once; callers never write to it)."""
        return tuple(~regen for regen in self.regenerate)

    def keeps_all(self, scale: int) -> bool:
        """Is every token of ``scale`` kept (by the mask or the strength)?"""
        return scale < self.strength or self._summary[scale][0]

    def max_free(self, scale: int) -> int:
        """The most positions of one sample that ``scale`` regenerates."""
        return 0 if scale < self.strength else self._summary[scale][2]

    def keep(self, scale: int) -> torch.Tensor | None:
        """(B, n) bool, True = force the source token; ``None`` when nothing is kept."""
        if scale < self.strength:
            return torch.ones_like(self.regenerate[scale])
        return None if self._summary[scale][1] else self._kept[scale]

    def source(self, scale: int) -> torch.Tensor:
        """(B, n) int64 source tokens of ``scale``."""
        return self.source_tokens[scale]

    def keep_masks(self) -> list[torch.Tensor]:
        """Per scale (B, n) bool keep masks with the strength applied (never ``None``)."""
        return [k if (k := self.keep(si)) is not None else self._kept[si]
                for si in range(self.num_scales)]


def _summarize(regenerate: Sequence[torch.Tensor]) -> tuple[tuple[bool, bool, int], ...]:
    """Per scale ``(nothing regenerated, all regenerated, most free positions of a sample)``,
    read from the masks' device in one copy."""
    stats = torch.stack([torch.stack([(~regen.any()).long(), regen.all().long(),
                                      regen.sum(-1).amax()]) for regen in regenerate])
    return tuple((bool(none), bool(every), int(free)) for none, every, free in stats.tolist())


def _cosine_entry(n: int, steps: int) -> tuple[int, ...]:
    """Schedule entry (official semantics) whose first step re-predicts n - 1 tokens.

    Scaled by the sampler to f free tokens this re-predicts all f, then keeps masked the
    ``f·cos(π/2 · j/steps)`` least confident before step j + 1.
    """
    if steps == 0 or n == 1:
        return (n,)
    steps = min(steps, n - 1)
    left = [n - 1]  # tokens still masked before each step
    for j in range(1, steps):
        target = math.floor((n - 1) * math.cos(math.pi / 2 * j / steps))
        left.append(max(min(target, left[-1] - 1), steps - j))
    commits = [left[j - 1] - left[j] for j in range(1, steps)] + [left[-1]]
    return (n - left[0], *commits)


def edit_schedule(base: Schedule, spec: EditSpec, steps: int | Sequence[int]) -> Schedule:
    """The mask schedule of an edit (rule in the module docstring).

    Args:
        base: the plain generation schedule (used where nothing is kept).
        spec: the edit.
        steps: refinement steps of partly kept scales (0 = none), one for all or per scale.
    """
    per_scale = [steps] * len(base) if isinstance(steps, int) else list(steps)
    out = []
    for si, entry in enumerate(base):
        n = sum(entry)
        if spec.keep(si) is None:
            out.append(tuple(entry))
        elif spec.keeps_all(si):
            out.append((n,))
        else:
            out.append(_cosine_entry(n, min(per_scale[si], spec.max_free(si))))
    return tuple(out)
