"""Pure mapping from UI control values to engine arguments.

Covers the quality ↔ speed slider (masked refinement steps, with an expected-time label), the
seed box and its 🎲 button, class dropdown choices, and the outpaint extents. Nothing here
imports Gradio; the functions are tested directly.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from hmar_core import schedule_from_steps
from hmar_core.editing import EditOptions

from .errors import InputError

__all__ = [
    "BRUSH_SIZE_RANGE",
    "CFG_RANGE",
    "DEFAULT_BRUSH_SIZE",
    "EXTENT_RANGE",
    "FEATHER_RANGE",
    "GROW_RANGE",
    "MAX_SEED",
    "MAX_VARIANTS",
    "NO_CLASS",
    "PADDING_RANGE",
    "TOP_K_RANGE",
    "SEED_LIMIT",
    "SamplingParams",
    "Timing",
    "class_choices",
    "class_strength_info",
    "LONG_JOB_SECONDS",
    "clamp",
    "class_id_from_choice",
    "edit_options",
    "expected_time_label",
    "max_quality_steps",
    "outpaint_extents",
    "parse_seed",
    "random_seed",
    "refinement_passes",
    "sampling_params",
    "work_estimate",
]

#: Seeds the 🎲 button draws are below this (short enough to read and type back).
MAX_SEED = 2**31 - 1
#: The largest seed the engine takes (2^63 - 1).
SEED_LIMIT = 2**63 - 1
#: Upper bound of the variants slider (images per run, each its own run of the model).
MAX_VARIANTS = 8
#: Ranges of the "Advanced" controls (the sliders and the server use the same numbers).
CFG_RANGE = (0.0, 10.0)
TOP_K_RANGE = (0, 4096)
#: Ranges of the "Mask options" controls and of the outpaint extent (percent).
GROW_RANGE = (0, 4)
FEATHER_RANGE = (0, 32)
PADDING_RANGE = (0, 256)
EXTENT_RANGE = (5, 100)
#: The "Brush size" slider: the width of a stroke in pixels of the picture, and its default
#: (Gradio's brush takes the radius: half of it).
BRUSH_SIZE_RANGE = (2, 256)
DEFAULT_BRUSH_SIZE = 48
#: Dropdown value for "no class" (Generate: a random class; editing: unconditional).
NO_CLASS = -1
#: The slider never offers more steps than this, whatever the pyramid allows.
_STEP_CAP = 12

OUTPAINT_SIDES = ("left", "right", "top", "bottom")


@dataclass(frozen=True)
class SamplingParams:
    """Validated sampler arguments taken from the UI.

    Attributes:
        steps: masked refinement steps per coarse scale (0 = fastest).
        cfg: classifier-free guidance weight (>= 0).
        top_k: keep the k most likely tokens (0 = off).
        top_p: nucleus sampling threshold in [0, 1] (0 or 1 = off).
        seed: the generator seed (always set: a random one when the box was empty).
        variants: number of images (run one after the other, seeds ``seed + i``).
    """

    steps: int
    cfg: float
    top_k: int
    top_p: float
    seed: int
    variants: int


@dataclass(frozen=True)
class Timing:
    """Measured cost of one image: the fastest setting and each extra network pass.

    Attributes:
        base_seconds: one image at ``steps = 0`` (all scales, decode and previews).
        seconds_per_pass: one extra masked-refinement pass.
    """

    base_seconds: float
    seconds_per_pass: float


# ------------------------------------------------------------------------- quality ↔ speed
def max_quality_steps(
    patch_nums: Sequence[int], has_mask_branch: bool = True, max_side: int | None = None
) -> int:
    """The right end of the quality slider: more steps than this change nothing.

    Args:
        patch_nums: the model's pyramid.
        has_mask_branch: ``False`` for VAR-style models (no refinement: the slider is fixed at 0).
        max_side: the model's ``SamplerConfig.refine_max_side`` (the scales the knob refines).

    Returns:
        The largest useful number of steps, capped at 12.
    """
    if not has_mask_branch:
        return 0
    useful = 0
    for steps in range(1, _STEP_CAP + 1):
        if (refinement_passes(patch_nums, steps, max_side)
                == refinement_passes(patch_nums, steps - 1, max_side)):
            break
        useful = steps
    return useful


def refinement_passes(patch_nums: Sequence[int], steps: int, max_side: int | None = None) -> int:
    """Extra network passes that ``steps`` adds over pure next-scale prediction (``max_side``:
    the model's ``SamplerConfig.refine_max_side``)."""
    schedule = schedule_from_steps(tuple(patch_nums), steps, max_side)
    return sum(len(entry) - 1 for entry in schedule)


def class_strength_info(
    patch_nums: Sequence[int], has_mask_branch: bool = True, max_side: int | None = None,
    revise: bool = False,
) -> str:
    """The help under the class edit's strength slider. Without ``revise`` it says from which
    strength a whole-picture class edit keeps every scale that the quality slider refines
    (those scales are copied from the original, so the slider has nothing to change there);
    with it (the app's class edits), that the kept scales lose the tokens the class disfavours
    (which the quality slider then refines)."""
    if revise:
        return ("Coarse scales kept from the original, except the parts the new class "
                "disagrees with: more = closer to it")
    text = "Coarse scales copied from the original: more = closer to it"
    if not has_mask_branch:
        return text
    schedule = schedule_from_steps(tuple(patch_nums), 1, max_side)
    refined = [si for si, entry in enumerate(schedule) if len(entry) > 1]
    if not refined:
        return text
    last = refined[-1]
    return (f"{text}. From {last + 1} on, a whole-picture edit keeps every scale that Speed ⟷ "
            f"Quality refines (up to {patch_nums[last]}×{patch_nums[last]}), so that slider "
            "changes nothing there")


def expected_time_label(
    patch_nums: Sequence[int], steps: int, variants: int = 1, timing: Timing | None = None,
    max_side: int | None = None,
) -> str:
    """The text under the quality slider, e.g. ``"≈ 0.4 s · 9 network passes per image"``.

    Args:
        patch_nums: the model's pyramid.
        steps: the slider value.
        variants: images per run (time grows about linearly with them on a CPU).
        timing: measured costs (:func:`app.calibrate`); ``None`` shows only the pass count.
        max_side: the model's ``SamplerConfig.refine_max_side``.
    """
    extra = refinement_passes(patch_nums, steps, max_side)
    passes = len(patch_nums) + extra
    speed = "fastest" if extra == 0 else f"{extra} refinement passes"
    detail = f"{passes} network passes per image ({speed})"
    if timing is None:
        return f"{detail}."
    seconds = (timing.base_seconds + extra * timing.seconds_per_pass) * max(1, variants)
    shown = f"≈ {seconds:.1f} s" if seconds >= 0.1 else "< 0.1 s"
    return (f"Expected time {shown} for {max(1, variants)} image(s) · {detail}. Edits take "
            "this per model window (outpainting: many); the status says so when they start.")


#: Jobs expected to take longer than this get a warning in the status line when they start.
LONG_JOB_SECONDS = 30.0


def work_estimate(
    patch_nums: Sequence[int], steps: int, windows: int, variants: int,
    timing: Timing | None, max_side: int | None = None,
) -> str:
    """The start-of-run note from the actual work, e.g. ``"22 model windows × 2 variant(s),
    expected ≈ 41 s: a long job (Stop ends it)"``.

    One model window costs about one generated image (:class:`Timing`); an outpaint needs
    many windows, an inpaint one (a crop around the mask or the whole picture).
    """
    count = max(1, windows) * max(1, variants)
    work = (f"{windows} model windows × {variants} variant(s)" if windows > 1
            else f"{variants} image(s)")
    if timing is None:
        return work
    extra = refinement_passes(patch_nums, steps, max_side)
    seconds = (timing.base_seconds + extra * timing.seconds_per_pass) * count
    note = f"{work}, expected ≈ {seconds:.0f} s" if seconds >= 1 else f"{work}, expected < 1 s"
    if seconds > LONG_JOB_SECONDS:
        note += ": a long job (Stop ends it)"
    return note


# ------------------------------------------------------------------------------------- seed
def random_seed() -> int:
    """A fresh seed for the 🎲 button."""
    return secrets.randbelow(MAX_SEED + 1)


def parse_seed(value: float | int | str | None, notes: list[str] | None = None) -> int:
    """The seed box value as an exact int; empty means a fresh random seed.

    Digits are read exactly (``"9223372036854775807"`` stays that number). A seed outside
    ``0 .. 2^63 - 1`` is clamped like every other control, with a note.

    Raises:
        InputError: fractional or not a number.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return random_seed()
    seed = _exact_int(value)
    if seed is None:
        raise InputError(f"The seed must be a whole number, got {value!r}.")
    adjusted = min(max(seed, 0), SEED_LIMIT)
    if adjusted != seed and notes is not None:
        notes.append(f"Seed {seed} → {adjusted}")
    return adjusted


def _exact_int(value: object) -> int | None:
    """``value`` as an exact int (ints and digit strings without going through float, so
    seeds above 2**53 survive; whole floats and "42.0" too), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number != int(number):
        return None
    return int(number)


# ---------------------------------------------------------------------------------- classes
def class_choices(names: Sequence[str], none_label: str | None = None) -> list[tuple[str, int]]:
    """Dropdown choices ``[(label, class id), ...]`` with readable names.

    Args:
        names: ``pipeline.class_names``.
        none_label: if given, a first entry with value :data:`NO_CLASS` (e.g. "🎲 random").
    """
    choices = [(none_label, NO_CLASS)] if none_label is not None else []
    choices += [(f"{name} ({index})", index) for index, name in enumerate(names)]
    return choices


def class_id_from_choice(value: int | float | str | None, num_classes: int) -> int | None:
    """The dropdown value as a class id, ``None`` for :data:`NO_CLASS` / empty.

    Raises:
        InputError: not a valid class id of this model.
    """
    if value is None or value == "" or value == NO_CLASS:
        return None
    try:
        class_id = int(value)
    except (TypeError, ValueError):
        raise InputError(f"Unknown class {value!r}: pick one from the list.") from None
    if class_id == NO_CLASS:
        return None
    if not 0 <= class_id < num_classes:
        raise InputError(f"Unknown class {class_id}: this model has classes 0..{num_classes - 1}.")
    return class_id


# --------------------------------------------------------------------------- sampler params
def _number(name: str, value: object) -> float:
    """A control value as a finite float; anything else is refused (it cannot be clamped)."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be a number, got {value!r}.")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise InputError(f"{name} must be a number, got {value!r}.")
    return number


def clamp(name: str, value: object, low: float, high: float, notes: list[str] | None,
          whole: bool = False) -> float:
    """``value`` clamped to ``[low, high]`` (rounded if ``whole``), noting any change.

    Out-of-range values are handled one way across the app: clamped to the control's range,
    with a note (``"Variants 100 → 8"``) that the status line shows. Values that are not
    numbers are refused.

    Raises:
        InputError: not a number.
    """
    number = _number(name, value)
    adjusted = min(max(float(round(number)) if whole else number, low), high)
    if adjusted != number and notes is not None:
        notes.append(f"{name} {number:g} → {adjusted:g}")
    return adjusted


def sampling_params(
    steps: float | int,
    cfg: float | int,
    top_k: float | int,
    top_p: float | int,
    seed: float | int | str | None,
    variants: float | int,
    max_steps: int,
    notes: list[str] | None = None,
) -> SamplingParams:
    """Validate the shared sampling controls (out-of-range values are clamped, see :func:`clamp`).

    Args:
        steps: the quality slider value (``0..max_steps``).
        cfg, top_k, top_p: the "Advanced" controls (:data:`CFG_RANGE`, :data:`TOP_K_RANGE`,
            0..1).
        seed: the seed box (empty → random; never clamped: a wrong seed is refused).
        variants: the variants slider (1..:data:`MAX_VARIANTS`).
        max_steps: :func:`max_quality_steps` of the model.
        notes: receives one note per clamped value.

    Raises:
        InputError: a value that is not a number, or a bad seed.
    """
    step_count = clamp("Quality", steps, 0, max_steps, notes, whole=True)
    guidance = clamp("CFG", cfg, *CFG_RANGE, notes)
    k = clamp("Top-k", top_k, *TOP_K_RANGE, notes, whole=True)
    p = clamp("Top-p", top_p, 0.0, 1.0, notes)
    count = clamp("Variants", variants, 1, MAX_VARIANTS, notes, whole=True)
    return SamplingParams(int(step_count), guidance, int(k), p, parse_seed(seed, notes), int(count))


# ---------------------------------------------------------------------------- edit options
def edit_options(
    params: SamplingParams,
    *,
    class_id: int | None,
    strength: float | int,
    num_scales: int,
    grow: float | int = 1,
    feather: float | int = 8,
    only_masked: bool = False,
    padding: float | int = 32,
    revise: float | None = None,
    notes: list[str] | None = None,
) -> EditOptions:
    """The engine's :class:`~hmar_core.editing.EditOptions` from the UI controls.

    Args:
        params: the validated shared sampling controls.
        class_id: target / guide class (``None``: plain in-filling with the null class).
        strength: scales kept from the original (0 … ``num_scales - 1``).
        num_scales: the model's number of scales.
        grow: mask dilation in tokens; feather: blend width in pixels.
        only_masked: "Only masked area" (``fit="masked"``: a crop around the mask).
        padding: pixels around the mask's box in that mode.
        revise: :attr:`~hmar_core.editing.EditOptions.revise` (class edits).
        notes: receives one note per clamped value (see :func:`clamp`).

    Raises:
        InputError: a value that is not a number.
    """
    return EditOptions(
        class_id=class_id, seed=params.seed, steps=params.steps, cfg=params.cfg,
        top_k=params.top_k, top_p=params.top_p,
        strength=int(clamp("Strength", strength, 0, num_scales - 1, notes, whole=True)),
        grow=int(clamp("Grow mask", grow, *GROW_RANGE, notes, whole=True)),
        feather=int(clamp("Feather", feather, *FEATHER_RANGE, notes, whole=True)),
        fit="masked" if only_masked else "whole",
        padding=int(clamp("Crop padding", padding, *PADDING_RANGE, notes, whole=True)),
        num_variants=params.variants, revise=revise,
    )


# -------------------------------------------------------------------------------- outpaint
def outpaint_extents(
    sides: Sequence[str] | None, extent_percent: float | int, size: tuple[int, int],
    notes: list[str] | None = None,
) -> dict[str, int]:
    """Pixels to add per side for the outpaint controls.

    Args:
        sides: the checked directions (any of "Left", "Right", "Top", "Bottom"; case-insensitive).
        extent_percent: the extent slider, in percent of the image's width (left/right) or
            height (top/bottom); clamped to :data:`EXTENT_RANGE`.
        size: ``(width, height)`` of the source image.
        notes: receives a note when the extent was clamped.

    Returns:
        ``{"left": px, "right": px, "top": px, "bottom": px}`` (0 for unchecked sides).

    Raises:
        InputError: no direction checked, or an extent that is not a number.
    """
    chosen = {side.strip().lower() for side in (sides or [])}
    unknown = chosen - set(OUTPAINT_SIDES)
    if unknown:
        raise InputError(f"Unknown outpaint direction(s): {', '.join(sorted(unknown))}.")
    if not chosen:
        raise InputError("Tick at least one direction to extend the picture.")
    percent = clamp("Extent", extent_percent, *EXTENT_RANGE, notes)
    width, height = size
    out = {}
    for side in OUTPAINT_SIDES:
        base = width if side in ("left", "right") else height
        out[side] = max(1, round(base * percent / 100)) if side in chosen else 0
    return out
