"""The typed public API: :class:`Pipeline` (tokenizer + transformer + sampler defaults).

``Pipeline.from_pretrained(folder)`` / ``save_pretrained(folder)`` use our format: a folder with
``config.json``, ``tokenizer.safetensors`` and ``transformer.safetensors``.
:func:`load_official` reads the official ``.pth`` files (VQVAE + HMAR, stage-1/stage-2 or VAR).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from PIL import Image

from . import checkpoint as ckpt
from . import editing_ops
from .config import SamplerConfig, TokenizerConfig, TransformerConfig
from .editing import EditOptions
from .editing_ops import EditResult, PreviewCallback, default_class_strength
from .editing_outpaint import outpaint as outpaint_image
from .editing_session import EditSession
from .folder_config import FORMAT_VERSION, read_folder_config
from .images import ImageLike
from .model import ScaleRunner, TokenModel
from .sampler import SampleOutput, ScaleConstraint, ScaleState, sample
from .schedules import Schedule, default_schedule, schedule_from_steps, validate_schedule
from .tokenizer import MultiScaleVQTokenizer
from .transformer import HMARTransformer
from .weights_io import DEFAULT_SHARD_BYTES, load_weights, save_weights

if TYPE_CHECKING:
    from .fast import FastPipeline

__all__ = ["GenerateOutput", "Pipeline", "load_official"]

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
    """Tokenizer, transformer and sampling defaults, with generation and checkpoint I/O.

    Attributes:
        tokenizer: the :class:`MultiScaleVQTokenizer` (``encode`` / ``decode``).
        transformer: the :class:`HMARTransformer`.
        model: :class:`TokenModel`, ``model(labels, tokens, masked=None) -> logits``.
        sampler_config: default :class:`SamplerConfig` for :meth:`generate`.
        class_names: a readable name per class id.
    """

    def __init__(
        self,
        tokenizer: MultiScaleVQTokenizer,
        transformer: HMARTransformer,
        sampler_config: SamplerConfig | None = None,
        class_names: Sequence[str] | None = None,
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
        self.eval()

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
            schedule = schedule_from_steps(self.patch_nums, steps)
        elif self.transformer.cfg.has_mask_branch:
            schedule = default_schedule(self.patch_nums)
        else:
            schedule = schedule_from_steps(self.patch_nums, 0)
        if not self.transformer.cfg.has_mask_branch and any(len(e) > 1 for e in schedule):
            raise ValueError("this model has no mask branch (VAR): use steps=0 or a schedule "
                             "with one entry per scale")
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
        """Run the sampler with this pipeline's network and tokenizer (see :func:`sample`)."""
        return sample(
            ScaleRunner(self.transformer), self.tokenizer.quantize, self.patch_nums, settings,
            schedule, labels=labels, null_class=self.transformer.cfg.null_class,
            generator=generator, constraint=constraint, on_scale=on_scale, resume=resume,
            record_steps=record_steps,
        )

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
        return_tokens: bool = False,
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
            return_tokens: kept for API symmetry; tokens are always returned.
            on_scale: called after every scale with the sampler state (previews).

        Returns:
            :class:`GenerateOutput` with images in [0, 1].
        """
        del return_tokens
        settings = self.sampler_settings(cfg=cfg, top_k=top_k, top_p=top_p)
        schedule = self.resolve_schedule(mask_schedule, steps)
        generator, seed = self.make_generator(seed)
        labels = self.labels_for(class_ids, batch_size, generator)
        out = self.sample_tokens(labels, settings, schedule, generator, on_scale=on_scale)
        images = (self.tokenizer.decode_fhat(out.f_hat) + 1) / 2
        last = self.patch_nums[-1]
        confidence = out.confidence[-1].view(-1, last, last)
        return GenerateOutput(images, out.tokens, out.labels, confidence, seed)

    def to_fast(self, **options: Any) -> FastPipeline:
        """The fast inference engine over these weights (bf16, CUDA graphs, sync-free sampling).

        ``options`` go to :class:`hmar_core.fast.FastPipeline` (``dtype``, ``cuda_graphs``, ...);
        its ``generate`` / ``sample_tokens`` take the same arguments as this pipeline's.
        """
        from .fast import FastPipeline

        return FastPipeline(self, **options)

    # ---------------------------------------------------------------------------- editing
    def edit(
        self,
        image: ImageLike,
        mask: ImageLike | None = None,
        options: EditOptions | None = None,
        *,
        session: EditSession | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> EditResult:
        """The rich edit behind :meth:`inpaint` / :meth:`edit_class` (see :func:`editing_ops.edit`).

        Args:
            image: PIL image or numpy array, any size and mode.
            mask: region to regenerate; ``None`` = the whole image.
            options: an :class:`EditOptions` (class, seed, steps, strength, fit, ...).
            session: an :class:`EditSession` for incremental re-edits.
            on_preview: called with an :class:`EditPreview` after every scale.
        """
        return editing_ops.edit(self, image, mask, options, session=session,
                                on_preview=on_preview)

    def inpaint(
        self,
        image: ImageLike,
        mask: ImageLike,
        *,
        class_id: int | None = None,
        seed: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        strength: int = 0,
        grow: int = 1,
        feather: int = 8,
        fit: str = "whole",
        padding: int = 32,
        num_variants: int = 1,
        on_preview: PreviewCallback | None = None,
        session: EditSession | None = None,
    ) -> Image.Image | list[Image.Image]:
        """Regenerate the masked region (white / True / opaque = regenerate).

        ``class_id=None`` in-fills with the null class; ``fit="masked"`` edits a square crop
        around the mask (``padding`` px) at full model resolution. Pixels farther than
        ``feather`` from the mask are returned unchanged. See :class:`EditOptions`.

        Returns:
            A PIL RGB image of the input's size, or a list of ``num_variants`` images.
        """
        options = EditOptions(class_id=class_id, seed=seed, steps=steps, cfg=cfg, top_k=top_k,
                              top_p=top_p, strength=strength, grow=grow, feather=feather,
                              fit=fit, padding=padding, num_variants=num_variants)
        result = self.edit(image, mask, options, session=session, on_preview=on_preview)
        return result.images if num_variants > 1 else result.image

    def outpaint(
        self,
        image: ImageLike,
        *,
        left: int = 0,
        right: int = 0,
        top: int = 0,
        bottom: int = 0,
        class_id: int | None = None,
        seed: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        strength: int = 0,
        grow: int = 1,
        feather: int = 8,
        fill: str = "replicate",
        num_variants: int = 1,
        on_preview: PreviewCallback | None = None,
    ) -> Image.Image | list[Image.Image]:
        """Extend the canvas by the given pixels and generate the new area.

        Large extents slide a window that keeps at least half known content (see
        :mod:`hmar_core.editing_outpaint`); zero extents return the input unchanged.

        Returns:
            A PIL RGB image of the extended size, or a list of ``num_variants`` images.
        """
        options = EditOptions(class_id=class_id, seed=seed, steps=steps, cfg=cfg, top_k=top_k,
                              top_p=top_p, strength=strength, grow=grow, feather=feather,
                              num_variants=num_variants)
        result = outpaint_image(self, image, left=left, right=right, top=top, bottom=bottom,
                                options=options, fill=fill, on_preview=on_preview)
        return result.images if num_variants > 1 else result.image

    def edit_class(
        self,
        image: ImageLike,
        class_id: int,
        mask: ImageLike | None = None,
        *,
        strength: int | None = None,
        seed: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        grow: int = 1,
        feather: int = 8,
        fit: str = "whole",
        padding: int = 32,
        num_variants: int = 1,
        on_preview: PreviewCallback | None = None,
        session: EditSession | None = None,
    ) -> Image.Image | list[Image.Image]:
        """Regenerate the masked region (``None``: the whole image) as class ``class_id``.

        ``strength`` = coarse scales kept from the source (default
        :func:`default_class_strength`: ~30 % of the scales, keeping colours and layout).

        Returns:
            A PIL RGB image of the input's size, or a list of ``num_variants`` images.
        """
        if isinstance(class_id, bool) or not isinstance(class_id, int):
            raise ValueError(f"class_id must be an int class id, got {class_id!r}")
        if strength is None:
            strength = default_class_strength(len(self.patch_nums))
        options = EditOptions(class_id=class_id, seed=seed, steps=steps, cfg=cfg, top_k=top_k,
                              top_p=top_p, strength=strength, grow=grow, feather=feather,
                              fit=fit, padding=padding, num_variants=num_variants)
        result = self.edit(image, mask, options, session=session, on_preview=on_preview)
        return result.images if num_variants > 1 else result.image

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
        dtype: torch.dtype = torch.float32,
    ) -> Pipeline:
        """Load a folder written by :meth:`save_pretrained`.

        Raises:
            ckpt.CheckpointError: missing files, bad JSON, wrong keys/shapes, corrupt weights.
        """
        folder = Path(folder)
        config = read_folder_config(folder)
        weights = {name: load_weights(folder, name) for name in ("tokenizer", "transformer")}
        return cls.from_state_dicts(config.tokenizer, weights["tokenizer"], config.transformer,
                                    weights["transformer"], config.sampler,
                                    config.class_names, device=device, dtype=dtype)

    @classmethod
    def random(
        cls,
        tokenizer_cfg: TokenizerConfig | str = "tiny",
        transformer_cfg: TransformerConfig | str = "tiny",
        seed: int = 0,
        sampler_cfg: SamplerConfig | None = None,
    ) -> Pipeline:
        """A randomly initialised pipeline (tests, benchmarks, the start of training)."""
        from .init import random_modules

        if isinstance(tokenizer_cfg, str):
            tokenizer_cfg = TokenizerConfig.from_name(tokenizer_cfg)
        if isinstance(transformer_cfg, str):
            transformer_cfg = TransformerConfig.from_name(transformer_cfg)
        tokenizer, transformer = random_modules(tokenizer_cfg, transformer_cfg, seed)
        return cls(tokenizer, transformer, sampler_cfg)

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
        dtype: torch.dtype = torch.float32,
    ) -> Pipeline:
        """Build on the meta device and load (strictly) our-layout state dicts."""
        ckpt.check_declared_structure(tokenizer_cfg, tokenizer_sd, transformer_cfg,
                                      transformer_sd)
        with torch.device("meta"):
            tokenizer = MultiScaleVQTokenizer(tokenizer_cfg)
            transformer = HMARTransformer(transformer_cfg)
        ckpt.load_into(tokenizer, tokenizer_sd, "tokenizer")
        ckpt.load_into(transformer, transformer_sd, "transformer")
        pipe = cls(tokenizer, transformer, sampler_cfg, class_names)
        return pipe.to(device=device, dtype=dtype)


def load_official(
    vae_path: str | Path,
    hmar_path: str | Path,
    *,
    mask_path: str | Path | None = None,
    n_layers_train: int = 8,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    sampler_config: SamplerConfig | None = None,
    **overrides: Any,
) -> Pipeline:
    """Load official checkpoints, inferring the configuration from tensor shapes.

    Args:
        vae_path: the VQVAE ``.pth`` (e.g. ``vae_ch160v4096z32.pth``).
        hmar_path: an HMAR ``.pth`` (``base_blocks``/``ns_blocks``/``mask_blocks``), or a
            stage-1 / VAR ``.pth`` (``blocks.*``). With ``mask_path`` (a stage-2 ``.pth``) the
            two stages are merged into HMAR with ``n_layers_train`` branch blocks; a ``blocks``
            file alone loads as a VAR model (block-causal, KV cache).
        overrides: transformer config fields to force (e.g. ``patch_nums``).

    Returns:
        A :class:`Pipeline` in eval mode.
    """
    vae_sd = ckpt.convert_official_vqvae_state_dict(ckpt.load_torch_weights(vae_path))
    official = ckpt.load_torch_weights(hmar_path)
    if mask_path is not None:
        official = ckpt.merge_official_stage_state_dicts(
            official, ckpt.load_torch_weights(mask_path), n_layers_train)
    if any(k.startswith("base_blocks.") or k.startswith("ns_blocks.") for k in official):
        transformer_sd = ckpt.convert_official_hmar_state_dict(official)
    elif any(k.startswith("blocks.") for k in official):
        transformer_sd = ckpt.convert_official_var_state_dict(official)
    else:
        raise ckpt.CheckpointError(f"{hmar_path}: neither an HMAR nor a VAR/stage-1 checkpoint")
    transformer_cfg = ckpt.infer_transformer_config(transformer_sd, **overrides)
    tokenizer_cfg = ckpt.infer_tokenizer_config(vae_sd, patch_nums=transformer_cfg.patch_nums)
    return Pipeline.from_state_dicts(tokenizer_cfg, vae_sd, transformer_cfg, transformer_sd,
                                     sampler_config, device=device, dtype=dtype)
