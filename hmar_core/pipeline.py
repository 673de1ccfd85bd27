"""The typed public API: :class:`Pipeline` (tokenizer + transformer + sampler defaults + engine).

``Pipeline.from_pretrained(folder, engine="auto")`` / ``save_pretrained(folder)`` use our
format: a folder with ``config.json``, ``tokenizer.safetensors`` and ``transformer.safetensors``
(:func:`hmar_core.official.load_official` reads the official ``.pth`` files). Every method runs
on the pipeline's :class:`~hmar_core.engine.Engine`, ``"fast"`` or ``"reference"``
(``pipe.engine`` says which); editing is :mod:`hmar_core.editing` over the same engine.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from PIL import Image
from typing_extensions import Unpack

from . import checkpoint as ckpt
from . import editing
from .config import SamplerConfig, TokenizerConfig, TransformerConfig
from .editing import (
    ClassEditDefaults,
    EditFields,
    EditOptions,
    EditResult,
    EditSession,
    PreviewCallback,
    class_edit_defaults,
)
from .engine import Engine, EngineName, resolve_engine
from .folder_config import FORMAT_VERSION, read_folder_config
from .images import ImageLike
from .model import TokenModel
from .reference_engine import ReferenceEngine
from .sampler import SampleOutput, ScaleConstraint, ScaleState
from .schedules import Schedule, default_schedule, schedule_from_steps, validate_schedule
from .tokenizer import MultiScaleVQTokenizer
from .transformer import HMARTransformer
from .weights_io import DEFAULT_SHARD_BYTES, load_weights, save_weights

__all__ = ["GenerateOutput", "Pipeline"]

logger = logging.getLogger(__name__)

ClassIds = int | Sequence[int] | torch.Tensor | None


@dataclass
class GenerateOutput:
    """Result of :meth:`Pipeline.generate`.

    Attributes:
        images: (B, 3, H, W) float32 in [0, 1].
        tokens: the token pyramid, list of (B, pn²) int64.
        labels: (B,) int64 class ids used.
        confidence: (B, pn_last, pn_last) probability of each final-scale token.
        seed: the generator seed used.
    """

    images: torch.Tensor
    tokens: list[torch.Tensor]
    labels: torch.Tensor
    confidence: torch.Tensor
    seed: int


class Pipeline(nn.Module):
    """Tokenizer, transformer, sampling defaults and the engine that runs them.

    Args:
        tokenizer, transformer: the modules (eval mode is set here).
        sampler_config: default :class:`SamplerConfig` of every method.
        class_names: a readable name per class id.
        engine: ``"reference"`` (default here), ``"fast"`` or ``"auto"`` (see
            :func:`~hmar_core.engine.resolve_engine`); the loaders default to ``"auto"``.
        engine_options: keyword arguments of :class:`~hmar_core.fast.FastEngine` (``dtype``,
            ``cuda_graphs``, ``fused``, ``own_weights``, ...); only for the fast engine.

    Attributes:
        tokenizer: the :class:`MultiScaleVQTokenizer`.
        transformer: the :class:`HMARTransformer`.
        model: :class:`TokenModel`, ``model(labels, tokens, masked=None) -> logits`` (teacher
            forcing on the modules as they are, for tests and training tools).
        sampler_config: default :class:`SamplerConfig` for every method.
        class_names: a readable name per class id.
        backend: the :class:`~hmar_core.engine.Engine` every method runs on.
    """

    def __init__(
        self,
        tokenizer: MultiScaleVQTokenizer,
        transformer: HMARTransformer,
        sampler_config: SamplerConfig | None = None,
        class_names: Sequence[str] | None = None,
        *,
        engine: str = "reference",
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        tcfg, mcfg = tokenizer.cfg, transformer.cfg
        if tcfg.patch_nums != mcfg.patch_nums:
            raise ValueError(f"tokenizer pyramid {tcfg.patch_nums} != transformer pyramid "
                             f"{mcfg.patch_nums}")
        if (tcfg.vocab_size, tcfg.latent_channels) != (mcfg.vocab_size, mcfg.latent_channels):
            raise ValueError(
                f"tokenizer (vocab {tcfg.vocab_size}, latent {tcfg.latent_channels}) does not "
                f"match transformer (vocab {mcfg.vocab_size}, latent {mcfg.latent_channels})")
        if class_names is not None and len(class_names) != mcfg.num_classes:
            raise ValueError(f"{len(class_names)} class names for {mcfg.num_classes} classes")
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.model = TokenModel(transformer, tokenizer.quantize)
        self.sampler_config = sampler_config or SamplerConfig()
        self.class_names = list(class_names) if class_names is not None else [
            f"class {i}" for i in range(mcfg.num_classes)]
        self._engine_name: EngineName = resolve_engine(engine, self.device)
        self._engine_options = dict(engine_options or {})
        if self._engine_name == "reference" and self._engine_options:
            raise ValueError(f"engine options {sorted(self._engine_options)} apply to the fast "
                             "engine only")
        self._backend: Engine | None = None
        self.eval()

    # ------------------------------------------------------------------------------ engine
    @property
    def engine(self) -> EngineName:
        """Which engine runs every method: ``"fast"`` or ``"reference"``."""
        return self._engine_name

    @property
    def backend(self) -> Engine:
        """The :class:`~hmar_core.engine.Engine` (built on first use, rebuilt after ``.to``)."""
        if self._backend is None:
            if self._engine_name == "fast":
                from .fast.engine import FastEngine

                self._backend = FastEngine(self.tokenizer, self.transformer,
                                           **self._engine_options)
            else:
                self._backend = ReferenceEngine(self.tokenizer, self.transformer)
            logger.info("engine: %r", self._backend)
        return self._backend

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Pipeline:
        # .to / .cuda / .half move or cast the modules: the fast engine's views of them are
        # stale afterwards, so it is rebuilt on next use.
        self._backend = None
        return super()._apply(fn, recurse)  # type: ignore[return-value]

    def with_engine(self, engine: str, **engine_options: Any) -> Pipeline:
        """A pipeline over the same modules that runs on another engine.

        The fast engine works on copies of the weights here (the modules stay usable by this
        pipeline); load with ``from_pretrained(..., engine="fast")`` to have it own them
        instead (no float32 copies alive).
        """
        return Pipeline(self.tokenizer, self.transformer, self.sampler_config,
                        self.class_names, engine=engine, engine_options=engine_options)

    def model_key(self) -> tuple[object, ...]:
        """Identifies the weights, device, dtype and engine (edit-session cache keys)."""
        return (id(self.transformer), id(self.tokenizer), str(self.device), str(self.dtype),
                self.engine)

    # ----------------------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        return self.transformer.pos_start.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.pos_start.dtype

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.transformer.cfg.patch_nums

    @property
    def image_size(self) -> int:
        return self.tokenizer.cfg.image_size

    @property
    def num_classes(self) -> int:
        return self.transformer.cfg.num_classes

    @property
    def null_class(self) -> int:
        """The unconditional class id (``num_classes``)."""
        return self.transformer.cfg.null_class

    @property
    def has_mask_branch(self) -> bool:
        """Whether the model can refine (HMAR's mask branch); VAR and stage-1 models cannot."""
        return self.transformer.cfg.has_mask_branch

    def resolve_schedule(
        self, mask_schedule: Sequence[Sequence[int]] | None = None, steps: int | None = None
    ) -> Schedule:
        """The mask schedule to use: explicit > ``steps`` knob > sampler default > official."""
        if mask_schedule is not None and steps is not None:
            raise ValueError("give either mask_schedule or steps, not both")
        if mask_schedule is None and steps is None:
            mask_schedule = self.sampler_config.mask_schedule
            steps = self.sampler_config.steps
        if mask_schedule is not None:
            schedule = validate_schedule(mask_schedule, self.patch_nums)
        elif steps is not None:
            schedule = schedule_from_steps(self.patch_nums, steps,
                                           self.sampler_config.refine_max_side)
        elif self.has_mask_branch:
            schedule = default_schedule(self.patch_nums)
        else:
            schedule = schedule_from_steps(self.patch_nums, 0)
        if not self.has_mask_branch and any(len(e) > 1 for e in schedule):
            raise ValueError("this model has no mask branch (VAR or HMAR stage 1): use steps=0 "
                             "or a schedule with one entry per scale")
        return schedule

    def labels_for(self, class_ids: ClassIds, batch: int | None, generator: torch.Generator
                   ) -> torch.Tensor:
        """Class ids as an int64 (B,) tensor; ``None`` draws B uniform classes."""
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)
                                  or batch < 1):
            raise ValueError(f"batch_size must be a positive int, got {batch!r}")
        if class_ids is None:
            count = 1 if batch is None else batch
            uniform = torch.ones(self.num_classes, device=generator.device)
            drawn = torch.multinomial(uniform, count, replacement=True, generator=generator)
            return drawn.to(self.device)
        if isinstance(class_ids, int):
            class_ids = [class_ids] * (1 if batch is None else batch)
        labels = torch.as_tensor(class_ids, dtype=torch.int64).flatten().to(self.device)
        if labels.numel() == 0:
            raise ValueError("need at least one class id")
        if batch is not None and labels.numel() != batch:
            raise ValueError(f"{labels.numel()} class ids for batch {batch}")
        bad = labels[(labels < 0) | (labels > self.num_classes)]
        if bad.numel():
            raise ValueError(f"class id {int(bad[0])} out of range: use 0..{self.num_classes - 1} "
                             f"(or {self.num_classes} for unconditional)")
        return labels

    def sampler_settings(self, **overrides: Any) -> SamplerConfig:
        """The default :class:`SamplerConfig` with the non-``None`` overrides applied."""
        values = self.sampler_config.to_dict()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return SamplerConfig.from_dict(values)

    def make_generator(self, seed: int | None) -> tuple[torch.Generator, int]:
        if seed is None:
            seed = secrets.randbits(63)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return generator, seed

    # ---------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_tokens(
        self,
        labels: torch.Tensor,
        settings: SamplerConfig,
        schedule: Schedule,
        generator: torch.Generator,
        *,
        constraint: ScaleConstraint | None = None,
        on_scale: Callable[[ScaleState], None] | None = None,
        resume: ScaleState | None = None,
        record_steps: bool = False,
    ) -> SampleOutput:
        """Run the sampler on this pipeline's engine (see :func:`hmar_core.sampler.sample`)."""
        return self.backend.sample_tokens(
            labels, settings, schedule, generator, constraint=constraint, on_scale=on_scale,
            resume=resume, record_steps=record_steps)

    @torch.no_grad()
    def decode_latent(self, f_hat: torch.Tensor) -> torch.Tensor:
        """A latent (B, C, h, w), e.g. a :class:`ScaleState`'s ``f_hat``, → images (B, 3, S, S)
        float32 in [0, 1] (previews)."""
        return (self.backend.decode(f_hat) + 1) / 2

    @torch.no_grad()
    def generate(
        self,
        class_ids: ClassIds = None,
        *,
        seed: int | None = None,
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        mask_schedule: Sequence[Sequence[int]] | None = None,
        steps: int | None = None,
        batch_size: int | None = None,
        on_scale: Callable[[ScaleState], None] | None = None,
    ) -> GenerateOutput:
        """Generate images.

        Args:
            class_ids: one id for the whole batch, one per sample, or ``None`` (random classes).
            seed: generator seed (``None``: a fresh random seed, reported in the output).
            cfg, top_k, top_p: override the pipeline's sampler defaults.
            mask_schedule: explicit schedule (one entry per scale), or
            steps: the quality knob (0 = no refinement; see ``schedule_from_steps``).
            batch_size: number of images when ``class_ids`` is an int or ``None``.
            on_scale: called after every scale with the sampler state (previews); raising
                from it stops the run.

        Returns:
            :class:`GenerateOutput` with images in [0, 1].
        """
        settings = self.sampler_settings(cfg=cfg, top_k=top_k, top_p=top_p)
        schedule = self.resolve_schedule(mask_schedule, steps)
        generator, seed = self.make_generator(seed)
        labels = self.labels_for(class_ids, batch_size, generator)
        out = self.sample_tokens(labels, settings, schedule, generator, on_scale=on_scale)
        images = self.decode_latent(out.f_hat)
        last = self.patch_nums[-1]
        confidence = out.confidence[-1].view(-1, last, last)
        return GenerateOutput(images, out.tokens, out.labels, confidence, seed)

    # ---------------------------------------------------------------------------- editing
    def edit(
        self,
        image: ImageLike,
        mask: ImageLike | None = None,
        options: EditOptions | None = None,
        *,
        session: EditSession | None = None,
        on_preview: PreviewCallback | None = None,
        **fields: Unpack[EditFields],
    ) -> EditResult:
        """The rich edit behind :meth:`inpaint` / :meth:`edit_class` (:func:`editing.edit`).

        Args:
            image: PIL image or numpy array, any size and mode.
            mask: region to regenerate (white / True / opaque); ``None`` = the whole image.
            options: an :class:`EditOptions` (class, seed, steps, strength, fit, ...); keyword
                ``fields`` of the same names override it.
            session: an :class:`EditSession` for incremental re-edits.
            on_preview: called with an :class:`EditPreview` after every scale.
        """
        return editing.edit(self, image, mask, _options(options, fields), session=session,
                            on_preview=on_preview)

    def inpaint(
        self,
        image: ImageLike,
        mask: ImageLike,
        options: EditOptions | None = None,
        *,
        session: EditSession | None = None,
        on_preview: PreviewCallback | None = None,
        **fields: Unpack[EditFields],
    ) -> Image.Image | list[Image.Image]:
        """Regenerate the masked region (white / True / opaque = regenerate).

        Keywords are :class:`EditOptions` fields (``class_id=None`` in-fills with the null
        class; ``fit="masked"`` edits a square crop around the mask at full model resolution;
        pixels farther than ``feather`` from the mask are returned unchanged).

        Returns:
            A PIL image of the input's size, or a list of ``num_variants`` images.
        """
        result = self.edit(image, mask, options, session=session, on_preview=on_preview,
                           **fields)
        return _images(result)

    def outpaint(
        self,
        image: ImageLike,
        options: EditOptions | None = None,
        *,
        left: int = 0,
        right: int = 0,
        top: int = 0,
        bottom: int = 0,
        fill: str = "replicate",
        session: EditSession | None = None,
        on_preview: PreviewCallback | None = None,
        **fields: Unpack[EditFields],
    ) -> Image.Image | list[Image.Image]:
        """Extend the canvas by the given pixels and generate the new area.

        Keywords besides the extents and ``fill`` are :class:`EditOptions` fields. Large
        extents slide a window that keeps at least half known content (see
        :mod:`hmar_core.editing.outpaint`); zero extents return the input unchanged.

        Returns:
            A PIL image of the extended size, or a list of ``num_variants`` images.
        """
        result = editing.outpaint(self, image, left=left, right=right, top=top, bottom=bottom,
                                  options=_options(options, fields), fill=fill,
                                  session=session, on_preview=on_preview)
        return _images(result)

    def edit_class(
        self,
        image: ImageLike,
        class_id: int,
        mask: ImageLike | None = None,
        options: EditOptions | None = None,
        *,
        session: EditSession | None = None,
        on_preview: PreviewCallback | None = None,
        **fields: Unpack[EditFields],
    ) -> Image.Image | list[Image.Image]:
        """Regenerate the masked region (``None``: the whole image) as class ``class_id``.

        ``strength`` (coarse scales kept from the source) and ``revise`` default to the
        model's :meth:`class_edit_defaults` (without its own: ~30 % of the scales, and
        :data:`~hmar_core.editing.DEFAULT_CLASS_REVISE`): of the kept scales, the tokens the
        target class disfavours by more than ``-revise`` nats are regenerated too
        (``revise=None`` keeps them whole).

        Returns:
            A PIL image of the input's size, or a list of ``num_variants`` images.
        """
        if isinstance(class_id, bool) or not isinstance(class_id, int):
            raise ValueError(f"class_id must be an int class id, got {class_id!r}")
        defaults = self.class_edit_defaults()
        if fields.get("strength") is None and (options is None or "strength" in fields):
            fields["strength"] = defaults.strength
        if options is None and "revise" not in fields:
            fields["revise"] = defaults.revise
        fields["class_id"] = class_id
        result = self.edit(image, mask, options, session=session, on_preview=on_preview,
                           **fields)
        return _images(result)

    def class_edit_defaults(self) -> ClassEditDefaults:
        """This model's class-edit defaults (strength, revision threshold): its sampler
        config's ``class_strength`` / ``class_revise`` where set, else the library's."""
        return class_edit_defaults(self.sampler_config, len(self.patch_nums))

    # ------------------------------------------------------------------------ checkpoints
    def save_pretrained(
        self,
        folder: str | Path,
        dtype: torch.dtype | None = None,
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    ) -> None:
        """Write ``config.json`` + safetensors weights (optionally cast, e.g. bfloat16).

        Components larger than ``max_shard_bytes`` are split into shards of whole tensors.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": FORMAT_VERSION,
            "tokenizer": self.tokenizer.cfg.to_dict(),
            "transformer": self.transformer.cfg.to_dict(),
            "sampler": self.sampler_config.to_dict(),
            "class_names": self.class_names,
        }
        for name, module in (("tokenizer", self.tokenizer), ("transformer", self.transformer)):
            tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
                       .detach().cpu().contiguous() for k, v in module.state_dict().items()}
            save_weights(tensors, folder, name, max_shard_bytes)
        tmp = folder / ".config.json.tmp"
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        tmp.replace(folder / "config.json")

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        *,
        engine: str = "auto",
        **engine_options: Any,
    ) -> Pipeline:
        """Load a folder written by :meth:`save_pretrained`.

        Args:
            folder: the model folder.
            device: where the model runs.
            dtype: the reference engine's module dtype (default float32); for the fast
                engine, its block dtype (default half precision on accelerators, float32 on
                CPU; ``torch.float32`` gives the reference's tokens).
            engine: ``"auto"`` (default), ``"fast"`` or ``"reference"``.
            engine_options: more :class:`~hmar_core.fast.FastEngine` options.

        Raises:
            ckpt.CheckpointError: missing files, bad JSON, wrong keys/shapes, corrupt weights.
        """
        folder = Path(folder)
        config = read_folder_config(folder)
        weights = {name: load_weights(folder, name) for name in ("tokenizer", "transformer")}
        return cls.from_state_dicts(config.tokenizer, weights["tokenizer"], config.transformer,
                                    weights["transformer"], config.sampler,
                                    config.class_names, device=device, dtype=dtype,
                                    engine=engine, **engine_options)

    @classmethod
    def random(
        cls,
        tokenizer_cfg: TokenizerConfig | str = "tiny",
        transformer_cfg: TransformerConfig | str = "tiny",
        seed: int = 0,
        sampler_cfg: SamplerConfig | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        engine: str = "reference",
        **engine_options: Any,
    ) -> Pipeline:
        """A randomly initialised pipeline (tests, benchmarks, the start of training).

        Initialised on the CPU in float32 (reproducible by ``seed`` on any device); with the
        fast engine the blocks are cast to its dtype before they move to ``device``.
        """
        from .init import random_modules

        if isinstance(tokenizer_cfg, str):
            tokenizer_cfg = TokenizerConfig.from_name(tokenizer_cfg)
        if isinstance(transformer_cfg, str):
            transformer_cfg = TransformerConfig.from_name(transformer_cfg)
        tokenizer, transformer = random_modules(tokenizer_cfg, transformer_cfg, seed)
        return cls._assemble(tokenizer, transformer, sampler_cfg, None, device, dtype, engine,
                             engine_options)

    @classmethod
    def from_state_dicts(
        cls,
        tokenizer_cfg: TokenizerConfig,
        tokenizer_sd: dict[str, torch.Tensor],
        transformer_cfg: TransformerConfig,
        transformer_sd: dict[str, torch.Tensor],
        sampler_cfg: SamplerConfig | None = None,
        class_names: Sequence[str] | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        engine: str = "reference",
        **engine_options: Any,
    ) -> Pipeline:
        """Build on the meta device and load (strictly) our-layout state dicts.

        With the fast engine, the transformer blocks are built in its dtype before loading, so
        the checkpoint's tensors are cast straight into them (no float32 copy of the blocks is
        ever made) and the engine owns the weights.
        """
        ckpt.check_declared_structure(tokenizer_cfg, tokenizer_sd, transformer_cfg,
                                      transformer_sd)
        with torch.device("meta"):
            tokenizer = MultiScaleVQTokenizer(tokenizer_cfg)
            transformer = HMARTransformer(transformer_cfg)
        device = torch.device("cpu" if device is None else device)
        name = resolve_engine(engine, device)
        if name == "fast":
            from .fast.engine import cast_blocks_
            from .fast.runner import default_dtype as fast_dtype

            cast_blocks_(transformer, dtype or fast_dtype(device))
        ckpt.load_into(tokenizer, tokenizer_sd, "tokenizer")
        ckpt.load_into(transformer, transformer_sd, "transformer")
        return cls._assemble(tokenizer, transformer, sampler_cfg, class_names, device, dtype,
                             engine, engine_options)

    @classmethod
    def _assemble(
        cls,
        tokenizer: MultiScaleVQTokenizer,
        transformer: HMARTransformer,
        sampler_cfg: SamplerConfig | None,
        class_names: Sequence[str] | None,
        device: torch.device | str,
        dtype: torch.dtype | None,
        engine: str,
        engine_options: Mapping[str, Any],
    ) -> Pipeline:
        """Move the modules to ``device`` (and dtype) and wrap them with their engine."""
        device = torch.device("cpu" if device is None else device)
        name = resolve_engine(engine, device)
        if name == "fast":
            from .fast.engine import cast_blocks_
            from .fast.runner import default_dtype as fast_dtype

            block_dtype = dtype or fast_dtype(device)
            cast_blocks_(transformer, block_dtype)  # before the move: no float32 blocks there
            tokenizer.to(device)
            transformer.to(device)
            options = {"dtype": block_dtype, "own_weights": True, **engine_options}
            return cls(tokenizer, transformer, sampler_cfg, class_names, engine="fast",
                       engine_options=options)
        tokenizer.to(device=device, dtype=dtype or torch.float32)
        transformer.to(device=device, dtype=dtype or torch.float32)
        return cls(tokenizer, transformer, sampler_cfg, class_names,
                   engine_options=engine_options)  # refused unless empty (reference engine)


def _options(options: EditOptions | None, fields: Mapping[str, Any]) -> EditOptions:
    """``options`` (default :class:`EditOptions`) with the keyword fields applied."""
    base = options if options is not None else EditOptions()
    try:
        return replace(base, **fields)
    except TypeError as err:  # an unknown keyword: say which, like a signature would
        raise TypeError(f"unknown edit option: {err}") from None


def _images(result: EditResult) -> Image.Image | list[Image.Image]:
    return result.images if len(result.images) > 1 else result.image
