"""Variants: several pictures from one set of settings, each reproducible on its own.

**The rule**: variant ``i`` (0-based) of a run with seed ``s`` is an independent run of one
sample with seed :func:`variant_seed` ``(s, i) = (s + i) mod 2^63``, the engine's seed range
(``0 … 2^63 - 1``; after the largest seed comes 0). So variant #3 of "seed 100, 4 variants"
is exactly what "seed 102, 1 variant" gives, with the same other settings.

Why not one batch with a generator per row: the model's logits are not batch-invariant (a row
of a batch of 4 differs from the same row alone by ~2e-5 on CPU float32), so a row of a batch
can pick another token than the same sample run alone. One run per variant costs more on a GPU
(no batching) and about the same on a CPU (see docs/APP.md).

The app (:mod:`app.runs`) and the CLI (:mod:`hmar_core.cli_edit`) both run variants through
the functions here; ``Pipeline.generate(batch_size=...)`` stays the batched path (one generator
for the whole batch, as the official sampler).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from .editing import EditOptions, EditPreview, EditResult, EditSession, edit, outpaint
from .sampler import ScaleState

if TYPE_CHECKING:
    from .images import ImageLike
    from .pipeline import GenerateOutput, Pipeline

__all__ = ["SEED_RANGE", "Sessions", "VariantSessions", "edit_variants", "generate_variants",
           "outpaint_variants", "resolve_seed", "run_variants", "variant_seed", "variant_seeds"]

#: Seeds are ints in ``[0, SEED_RANGE)``; variant seeds wrap around at its end.
SEED_RANGE = 2**63

Result = TypeVar("Result")
#: ``on_preview(variant index, preview)`` of the editing functions.
VariantPreview = Callable[[int, EditPreview], None]
#: ``on_done(variant index, result)`` of the editing functions.
VariantDone = Callable[[int, EditResult], None]


class VariantSessions:
    """One :class:`EditSession` per variant index, so that a re-edit with N variants resumes
    the unchanged coarse scales of every variant (a session remembers only its last run).

    Args:
        max_encodings: passed to every :class:`EditSession`.
    """

    def __init__(self, max_encodings: int = 4) -> None:
        self.max_encodings = max_encodings
        self._sessions: list[EditSession] = []

    def __repr__(self) -> str:
        return f"VariantSessions({len(self._sessions)} sessions, hits={self.hits})"

    def __getitem__(self, index: int) -> EditSession:
        """The session of variant ``index`` (made on first use)."""
        while len(self._sessions) <= index:
            self._sessions.append(EditSession(self.max_encodings))
        return self._sessions[index]

    @property
    def hits(self) -> int:
        """Scales restored from the cache, over every variant's session."""
        return sum(session.hits for session in self._sessions)

    def clear(self) -> None:
        """Forget everything (e.g. after the weights changed)."""
        self._sessions.clear()


#: What the editing functions take as ``session``: one shared by every variant, or one each.
Sessions = EditSession | VariantSessions | None


def _session_of(sessions: Sessions, index: int) -> EditSession | None:
    return sessions[index] if isinstance(sessions, VariantSessions) else sessions


def resolve_seed(seed: int | None) -> int:
    """``seed`` checked, or a fresh random seed for ``None``.

    Raises:
        ValueError: not an int in ``[0, 2^63)``.
    """
    if seed is None:
        return secrets.randbelow(SEED_RANGE)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_RANGE:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return seed


def variant_seed(seed: int, index: int) -> int:
    """The seed of variant ``index`` (0-based) of a run with ``seed``: ``(seed + index) mod
    2^63``.

    Raises:
        ValueError: a seed outside ``[0, 2^63)`` or a negative index.
    """
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"variant index must be an int >= 0, got {index!r}")
    return (resolve_seed(seed) + index) % SEED_RANGE


def variant_seeds(seed: int, count: int) -> list[int]:
    """The seeds of ``count`` variants of a run with ``seed`` (see :func:`variant_seed`)."""
    _check_count(count)
    return [variant_seed(seed, index) for index in range(count)]


def _check_count(count: int) -> None:
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"the number of variants must be an int >= 1, got {count!r}")


def run_variants(seed: int | None, count: int,
                 run_one: Callable[[int, int], Result]) -> list[Result]:
    """Call ``run_one(index, seed of that variant)`` for ``count`` variants, one after the
    other (the one loop behind every function here).

    Args:
        seed: the run's seed (``None``: a fresh random one, variant 0 gets it).
        count: how many variants (>= 1).
        run_one: runs one variant; raising from it ends the loop (e.g. the app's Stop).

    Returns:
        ``run_one``'s results, in variant order.
    """
    _check_count(count)
    base = resolve_seed(seed)
    return [run_one(index, variant_seed(base, index)) for index in range(count)]


def generate_variants(
    pipe: Pipeline,
    class_id: int | None,
    *,
    seed: int | None,
    count: int,
    cfg: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    steps: int | None = None,
    on_scale: Callable[[int, ScaleState], None] | None = None,
    on_done: Callable[[int, GenerateOutput], None] | None = None,
) -> list[GenerateOutput]:
    """``count`` pictures of ``class_id``, each a :meth:`Pipeline.generate` of one sample.

    Args:
        pipe: the pipeline.
        class_id: the class, or ``None`` for a random class per variant (drawn from that
            variant's seed, so it comes back with the seed too).
        seed, count: see :func:`run_variants`.
        cfg, top_k, top_p, steps: as :meth:`Pipeline.generate`.
        on_scale: ``on_scale(variant index, state)`` after every scale of every variant.
        on_done: ``on_done(variant index, output)`` as soon as a variant is finished.

    Returns:
        One :class:`GenerateOutput` (batch of 1) per variant; ``output.seed`` is its seed.
    """

    def one(index: int, variant: int) -> GenerateOutput:
        report = None if on_scale is None else (lambda state: on_scale(index, state))
        output = pipe.generate(class_id, seed=variant, cfg=cfg, top_k=top_k, top_p=top_p,
                               steps=steps, batch_size=1, on_scale=report)
        if on_done is not None:
            on_done(index, output)
        return output

    return run_variants(seed, count, one)


def _one_variant(options: EditOptions, on_preview: VariantPreview | None, index: int,
                 variant: int) -> tuple[EditOptions, Callable[[EditPreview], None] | None]:
    """The options (one sample, the variant's seed) and preview callback of one variant."""
    report = None if on_preview is None else (lambda preview: on_preview(index, preview))
    return replace(options, seed=variant, num_variants=1), report


def _finished(index: int, result: EditResult, on_done: VariantDone | None) -> EditResult:
    if on_done is not None:
        on_done(index, result)
    return result


def edit_variants(
    pipe: Pipeline,
    image: ImageLike,
    mask: ImageLike | None,
    options: EditOptions,
    *,
    session: Sessions = None,
    on_preview: VariantPreview | None = None,
    on_done: VariantDone | None = None,
) -> list[EditResult]:
    """``options.num_variants`` inpaints / class edits of ``image``, one run each.

    Args:
        pipe, image, mask: as :func:`hmar_core.editing.edit`.
        session: an :class:`EditSession` for every variant, or :class:`VariantSessions` (one
            each: re-edits resume every variant).
        options: the edit; ``seed`` is the run's seed, ``num_variants`` the count.
        on_preview: ``on_preview(variant index, preview)`` after every scale.
        on_done: ``on_done(variant index, result)`` as soon as a variant is finished.

    Returns:
        One :class:`EditResult` (one image) per variant; ``result.seed`` is its seed.
    """
    def one(index: int, variant: int) -> EditResult:
        variant_options, report = _one_variant(options, on_preview, index, variant)
        result = edit(pipe, image, mask, variant_options, session=_session_of(session, index),
                      on_preview=report)
        return _finished(index, result, on_done)

    return run_variants(options.seed, options.num_variants, one)


def outpaint_variants(
    pipe: Pipeline,
    image: ImageLike,
    extents: dict[str, int],
    options: EditOptions,
    *,
    fill: str = "replicate",
    session: Sessions = None,
    on_preview: VariantPreview | None = None,
    on_done: VariantDone | None = None,
) -> list[EditResult]:
    """``options.num_variants`` outpaints of ``image``, one run each.

    Args:
        pipe, image, fill: as :func:`hmar_core.editing.outpaint`.
        session: as :func:`edit_variants`.
        extents: pixels per side, ``{"left", "right", "top", "bottom"}`` (missing: 0).
        options: the edit; ``seed`` is the run's seed, ``num_variants`` the count.
        on_preview: ``on_preview(variant index, preview)`` after every scale of every window.
        on_done: ``on_done(variant index, result)`` as soon as a variant is finished.

    Returns:
        One :class:`EditResult` (one image) per variant; ``result.seed`` is its seed.
    """
    sides = {side: int(extents.get(side, 0)) for side in ("left", "right", "top", "bottom")}

    def one(index: int, variant: int) -> EditResult:
        variant_options, report = _one_variant(options, on_preview, index, variant)
        result = outpaint(pipe, image, **sides, options=variant_options, fill=fill,
                          session=_session_of(session, index), on_preview=report)
        return _finished(index, result, on_done)

    return run_variants(options.seed, options.num_variants, one)
