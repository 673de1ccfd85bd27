"""Image-level edits: any image in, composited PIL images out (inpaint, class edit, variants).

Shape legend: B = variants, S = the model's image side, P = final token grid side, H×W = the
user's image in pixels.

:func:`edit` converts the inputs (:mod:`hmar_core.images`), picks a square *window* of the
image ("whole": the padded square holding the whole image; "masked": a square around the mask
plus padding), resizes it to S, runs the constrained sampler (:func:`run_spec`) and pastes the
decoded window back, blending it in with :func:`~hmar_core.editing.masks.feather_weights` so pixels
beyond ``feather`` of the mask are exactly the input's. An empty mask returns the input
without calling the model. Outpainting (:mod:`hmar_core.editing.outpaint`) reuses
:func:`edit_window` with its own windows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from PIL import Image

from .. import images as im
from ..sampler import ScaleState
from ..schedules import Schedule
from .host import to_host
from .masks import composite, feather_weights
from .modes import like_input
from .revise import DEFAULT_CLASS_REVISE, revise_coarse
from .session import EditSession, SpecRun, run_spec
from .spec import DEFAULT_EDIT_STEPS, EditOptions, EditSpec, edit_schedule

if TYPE_CHECKING:
    from ..config import SamplerConfig
    from ..engine import EditModel

__all__ = ["ClassEditDefaults", "EditJob", "EditPreview", "EditResult", "PreviewCallback",
           "class_edit_defaults", "default_class_strength",
           "edit", "edit_window", "make_job", "result_of"]

logger = logging.getLogger(__name__)


@dataclass
class EditPreview:
    """What the preview callback receives after every scale.

    Attributes:
        scale: the scale just committed; ``num_scales``: how many there are.
        render: makes :attr:`images`; called on first access only, so a callback that skips
            a preview never pays for decoding it.
        confidence: (B, pn, pn) probability of each token of this scale (1.0 where kept); at
            the last scale this is the final confidence map (a heatmap in the app).
        restored: True when the scale came from the :class:`EditSession` cache.
        window, num_windows: which model window this is (outpainting uses several).
    """

    scale: int
    num_scales: int
    render: Callable[[], list[Image.Image]] = field(repr=False)
    confidence: torch.Tensor
    restored: bool = False
    window: int = 0
    num_windows: int = 1

    @cached_property
    def images(self) -> list[Image.Image]:
        """B PIL images at the input's size: the partial result decoded and composited (the
        scale's latent is kept, so this may be read after later scales have run)."""
        return self.render()


PreviewCallback = Callable[[EditPreview], None]


@dataclass
class EditResult:
    """Everything an edit produced (the app's view of it).

    Attributes:
        images: B composited PIL RGB images at the input's size (canvas size for outpaint).
        seed: the seed used (``None`` when the model was not called).
        labels: (B,) class ids used, or ``None``.
        confidence: (B, P, P) final-scale token confidence of the last window, or ``None``.
        tokens, source_tokens, keep_masks: per scale (B, pn²) of the last window.
        model_images: uint8 (B, S, S, 3), the decoded last window before compositing.
        scale_seconds: per scale, sampler seconds summed over windows (0.0 when restored).
        resumed_from: last scale restored from the session (-1: none).
        windows: the model windows used, in image (canvas) coordinates.
    """

    images: list[Image.Image]
    seed: int | None = None
    labels: torch.Tensor | None = None
    confidence: torch.Tensor | None = None
    tokens: list[torch.Tensor] = field(default_factory=list)
    source_tokens: list[torch.Tensor] = field(default_factory=list)
    keep_masks: list[torch.Tensor] = field(default_factory=list)
    model_images: np.ndarray | None = None
    scale_seconds: list[float] = field(default_factory=list)
    resumed_from: int = -1
    windows: list[im.Window] = field(default_factory=list)

    @property
    def image(self) -> Image.Image:
        """The first (often only) image."""
        return self.images[0]


def default_class_strength(num_scales: int) -> int:
    """Default strength of a class edit: keep the coarsest ~30 % of the scales.

    The colours and rough layout survive (3 of 10 scales at 256 px) while the class can still
    change the shapes; users trade this with the strength knob. A model may set its own
    (:attr:`~hmar_core.config.SamplerConfig.class_strength`; see :func:`class_edit_defaults`).
    """
    return max(1, math.ceil(0.3 * num_scales))


class ClassEditDefaults(NamedTuple):
    """A model's class-edit defaults: coarse scales kept, revision threshold (nats)."""

    strength: int
    revise: float


def class_edit_defaults(sampler: SamplerConfig, num_scales: int) -> ClassEditDefaults:
    """The class-edit defaults of a model with this sampler config and pyramid: its own
    ``class_strength`` / ``class_revise`` where set (strength capped at ``num_scales - 1``:
    one scale is always generated), else :func:`default_class_strength` and
    :data:`~hmar_core.editing.revise.DEFAULT_CLASS_REVISE`."""
    strength = (default_class_strength(num_scales) if sampler.class_strength is None
                else min(sampler.class_strength, max(0, num_scales - 1)))
    revise = DEFAULT_CLASS_REVISE if sampler.class_revise is None else sampler.class_revise
    return ClassEditDefaults(strength, revise)


@dataclass
class EditJob:
    """The per-call constants of an edit shared by all of its windows."""

    pipe: EditModel
    options: EditOptions
    labels: torch.Tensor
    seed: int
    session: EditSession | None
    on_preview: PreviewCallback | None


def _labels(pipe: EditModel, options: EditOptions) -> torch.Tensor:
    if options.class_id is None:
        class_id = pipe.null_class
    elif options.class_id >= pipe.num_classes:
        raise ValueError(f"class id {options.class_id} out of range: use 0..{pipe.num_classes - 1}"
                         " or None for plain in-filling")
    else:
        class_id = options.class_id
    return torch.full((options.num_variants,), class_id, dtype=torch.int64, device=pipe.device)


def make_job(
    pipe: EditModel,
    options: EditOptions,
    session: EditSession | None = None,
    on_preview: PreviewCallback | None = None,
) -> EditJob:
    """Validate the options against the pipeline and fix the seed and labels."""
    if options.strength > len(pipe.patch_nums):
        raise ValueError(f"strength must be in [0, {len(pipe.patch_nums)}], got {options.strength}")
    if options.fine_from is not None and options.fine_from >= len(pipe.patch_nums):
        raise ValueError(f"fine_from must be < {len(pipe.patch_nums)}, got {options.fine_from}")
    _, seed = pipe.make_generator(options.seed)
    return EditJob(pipe, options, _labels(pipe, options), seed, session, on_preview)


def _schedule(pipe: EditModel, options: EditOptions, spec: EditSpec) -> Schedule:
    """Per scale: the generation schedule of that scale's ``steps`` knob, edited by the spec."""
    configured = pipe.sampler_config.steps  # the model's own quality default, when it has one
    default = (0 if not pipe.has_mask_branch
               else DEFAULT_EDIT_STEPS if configured is None else configured)
    knobs = [options.steps_at(si) for si in range(len(pipe.patch_nums))]
    plain = {knob: pipe.resolve_schedule(None, knob) for knob in set(knobs)}
    base = tuple(plain[knob][si] for si, knob in enumerate(knobs))
    return edit_schedule(base, spec, [default if knob is None else knob for knob in knobs])


def unchanged(rgb: np.ndarray, options: EditOptions) -> EditResult:
    """The result of an edit with nothing to edit: the (converted) input, B times."""
    return EditResult([im.to_pil(rgb) for _ in range(options.num_variants)], seed=options.seed)


def edit_window(
    job: EditJob,
    canvases: list[np.ndarray],
    mask: np.ndarray,
    window: im.Window,
    *,
    seed: int | None = None,
    index: int = 0,
    count: int = 1,
) -> tuple[list[np.ndarray], SpecRun, EditSpec, np.ndarray]:
    """Regenerate ``mask`` inside ``window`` of every canvas (one per variant).

    Args:
        job: the edit's constants.
        canvases: B uint8 (H, W, 3) images (equal for inpainting, diverging for outpainting).
        mask: bool (H, W), True = regenerate (pixels outside the window are ignored).
        window: the square sent to the model.
        seed: this window's seed (default: the job's).
        index, count: window number and total, for previews.

    Returns:
        The composited canvases, the sampler run, the spec and the decoded window
        (B, S, S, 3) uint8.
    """
    pipe, options = job.pipe, job.options
    side, height, width = pipe.image_size, mask.shape[0], mask.shape[1]
    crops = [im.resize_image(im.crop_window(canvas, window), side) for canvas in canvases]
    mask_SS = im.mask_coverage(im.crop_window(mask, window), side)
    images = im.to_model_images(crops, pipe.device, pipe.dtype)  # (B, 3, S, S)
    # on the host: the spec's per-scale masks are made here and reach the device in one copy
    masks_BSS = torch.from_numpy(mask_SS)[None].expand(len(canvases), -1, -1)
    with torch.no_grad():
        source = (job.session.encode(pipe, images) if job.session is not None
                  else pipe.backend.encode(images))
    spec = EditSpec.from_pixel_mask(source, masks_BSS, job.labels, pipe.patch_nums,
                                    strength=options.strength, grow=options.grow,
                                    coarse_threshold=options.coarse_threshold)
    if options.revise is not None and options.class_id is not None:
        spec = revise_coarse(pipe, spec, options.revise)
    schedule = _schedule(pipe, options, spec)
    settings = pipe.sampler_settings(cfg=options.cfg, top_k=options.top_k, top_p=options.top_p,
                                     mask_cfg_ratio=options.mask_cfg_ratio)
    blend: list[np.ndarray] = []  # the feathered weights, made once when first needed

    def weights() -> np.ndarray:
        if not blend:
            blend.append(feather_weights(mask, options.feather) * window.inside(height, width))
        return blend[0]

    def place(decoded_BSS3: np.ndarray) -> list[np.ndarray]:
        out = []
        for canvas, generated in zip(canvases, decoded_BSS3):
            pasted = im.paste_window(canvas, im.resize_image(generated, window.side), window)
            out.append(composite(canvas, pasted, weights()))
        return out

    def decode(f_hat: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return im.from_model_images(pipe.backend.decode(f_hat))

    def on_scale(state: ScaleState, restored: bool) -> None:
        if job.on_preview is None:
            return
        pn = pipe.patch_nums[state.scale]
        f_hat = state.f_hat  # this scale's own (the sampler hands callbacks copies)

        def render() -> list[Image.Image]:
            return [im.to_pil(rgb) for rgb in place(decode(f_hat))]

        job.on_preview(EditPreview(state.scale, len(pipe.patch_nums), render,
                                   state.confidence.detach().view(-1, pn, pn).cpu(),
                                   restored, index, count))

    fine = None
    if options.fine_from is not None and options.fine_seed is not None:
        fine = (options.fine_from, options.fine_seed)
    run = run_spec(pipe, spec, settings, schedule, job.seed if seed is None else seed,
                   fine=fine, session=job.session,
                   on_scale=on_scale if job.on_preview is not None else None)
    weights()  # host work while the device samples (run_spec returns before it is done)
    decoded = decode(run.output.f_hat)
    return place(decoded), run, spec, decoded


def edit(
    pipe: EditModel,
    image: im.ImageLike,
    mask: im.ImageLike | None = None,
    options: EditOptions | None = None,
    *,
    session: EditSession | None = None,
    on_preview: PreviewCallback | None = None,
) -> EditResult:
    """Inpaint / class-edit / vary one image (the engine behind the pipeline's methods).

    Args:
        pipe: the pipeline.
        image: PIL image or numpy array, any size and mode.
        mask: region to regenerate (True / white / opaque); ``None`` = the whole image.
        options: see :class:`EditOptions` (default: in-fill with the null class).
        session: cache for incremental re-edits (see :mod:`hmar_core.editing.session`).
        on_preview: called with an :class:`EditPreview` after every scale.

    Returns:
        An :class:`EditResult`; with an empty mask the input itself (no model call).

    Raises:
        ValueError: bad image, mask, class, strength, or options.
    """
    options = options or EditOptions()
    rgb = im.to_rgb(image)
    height, width = rgb.shape[:2]
    pixel_mask = (np.ones((height, width), dtype=bool) if mask is None
                  else im.to_mask(mask, (height, width)))
    job = make_job(pipe, options, session, on_preview)
    if not pixel_mask.any():
        logger.info("edit: empty mask, returning the input unchanged")
        return unchanged(rgb, options)
    window = (im.Window.whole(height, width) if options.fit == "whole"
              else im.Window.around(pixel_mask, max(options.padding, options.feather)))
    canvases, run, spec, decoded = edit_window(job, [rgb] * options.num_variants, pixel_mask,
                                               window)
    return result_of(job, like_input([im.to_pil(canvas) for canvas in canvases], image), run,
                     spec, decoded, [window], run.seconds)


def result_of(
    job: EditJob,
    images: list[Image.Image],
    run: SpecRun,
    spec: EditSpec,
    decoded: np.ndarray,
    windows: list[im.Window],
    scale_seconds: list[float],
) -> EditResult:
    """The :class:`EditResult` of an edit whose last model window gave ``run``, ``spec`` and
    ``decoded`` (tensors moved to the CPU)."""
    last, scales = job.pipe.patch_nums[-1], len(run.output.tokens)
    host = to_host([job.labels, run.output.confidence[-1].view(-1, last, last),
                    *run.output.tokens, *spec.source_tokens, *spec.keep_masks()])
    return EditResult(
        images=images,
        seed=job.seed,
        labels=host[0],
        confidence=host[1],
        tokens=host[2:2 + scales],
        source_tokens=host[2 + scales:2 + 2 * scales],
        keep_masks=host[2 + 2 * scales:],
        model_images=decoded,
        scale_seconds=scale_seconds,
        resumed_from=run.resumed_from,
        windows=windows,
    )
