"""Frozen, typed configuration dataclasses and named presets.

Every component gets one config: :class:`TokenizerConfig`, :class:`TransformerConfig`,
:class:`SamplerConfig`. Derived values (widths, heads, drop-path rate, phi table) are computed
in ``__post_init__`` so a config is always complete and valid once built. Presets are reached
through ``TransformerConfig.from_name("hmar-d16")`` and ``TokenizerConfig.from_name(...)``.
Configs are stored in checkpoints as JSON (:meth:`to_dict` / :meth:`from_dict`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

__all__ = [
    "PATCH_NUMS",
    "SamplerConfig",
    "TokenizerConfig",
    "TransformerConfig",
    "phi_index_table",
]

#: The official pyramids by image size (VAR / HMAR ``utils/arg_util.py``).
PATCH_NUMS: dict[str, tuple[int, ...]] = {
    "256": (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    "512": (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    "1024": (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}

_C = TypeVar("_C", bound="_Serializable")

#: Largest guidance scale accepted (larger values only overflow the guided logits).
MAX_CFG = 1000.0


def phi_index_table(num_scales: int, num_phi: int) -> tuple[int, ...]:
    """Which of the ``num_phi`` shared phi convs each scale uses.

    Scale ``si`` uses the conv whose tick is nearest to ``si / (num_scales - 1)``, with ticks
    ``linspace(1/(3K), 1 - 1/(3K), K)`` for K = 4 and ``1/(2K)`` margins otherwise, computed in
    float64 as the official code does (the tie at scale 2 of 10 resolves to conv 1).

    Returns:
        One conv index per scale, e.g. ``(0, 0, 1, 1, 1, 2, 2, 3, 3, 3)`` for 10 scales.
    """
    if num_scales < 1 or num_phi < 1:
        raise ValueError(f"need num_scales >= 1 and num_phi >= 1, got {num_scales}, {num_phi}")
    if num_phi == 1:
        return (0,) * num_scales
    margin = 1 / (3 * num_phi) if num_phi == 4 else 1 / (2 * num_phi)
    ticks = np.linspace(margin, 1 - margin, num_phi)
    denominator = max(num_scales - 1, 1)
    return tuple(int(np.argmin(np.abs(ticks - si / denominator))) for si in range(num_scales))


class _Serializable:
    """Mixin: JSON-friendly dict round trip for frozen dataclasses (init fields only)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.init:
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__} must be a mapping of fields, "
                             f"got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)  # type: ignore[call-arg]


@dataclass(frozen=True)
class TokenizerConfig(_Serializable):
    """The multi-scale residual VQ-VAE (VAR's ``vae_ch160v4096z32`` by default).

    The downsampling factor is ``2 ** (len(channel_mult) - 1)``; the image side is
    ``downsample * patch_nums[-1]``.
    """

    vocab_size: int = 4096
    latent_channels: int = 32
    channels: int = 160
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    image_channels: int = 3
    patch_nums: tuple[int, ...] = PATCH_NUMS["256"]
    quant_resi: float = 0.5
    num_phi: int = 4
    norm_groups: int = 32
    downsample: int = field(init=False)
    image_size: int = field(init=False)
    phi_indices: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        _check_positive(self, ("vocab_size", "latent_channels", "channels", "num_res_blocks",
                               "image_channels", "num_phi", "norm_groups"))
        _check_int_tuple(self, "channel_mult")
        _check_patch_nums(self)
        _check_float(self, "quant_resi", -1.0, 1.0)
        for width in {self.channels * m for m in self.channel_mult}:
            if width % self.norm_groups:
                raise ValueError(
                    f"channel width {width} not divisible by {self.norm_groups} groups")
        object.__setattr__(self, "downsample", 2 ** (len(self.channel_mult) - 1))
        object.__setattr__(self, "image_size", self.downsample * self.patch_nums[-1])
        object.__setattr__(
            self, "phi_indices", phi_index_table(len(self.patch_nums), self.num_phi)
        )

    @classmethod
    def from_name(cls, name: str) -> TokenizerConfig:
        """A named preset: ``"vae-ch160v4096z32"`` (256 px), ``"-512"`` variant, or ours."""
        if name not in _TOKENIZER_PRESETS:
            raise ValueError(
                f"unknown tokenizer preset {name!r}; known: {sorted(_TOKENIZER_PRESETS)}")
        return cls(**_TOKENIZER_PRESETS[name])


@dataclass(frozen=True)
class TransformerConfig(_Serializable):
    """The HMAR (or VAR) transformer.

    ``width`` defaults to ``64 * depth`` and ``heads`` to ``depth`` (official builders).
    ``n_layers_train`` = number of blocks in each of the ns and mask branches; the first
    ``depth - n_layers_train`` blocks are shared (``base_blocks``). ``kind="var"`` is VAR: one
    block stack, block-causal attention, no mask branch, KV cache at inference.
    ``mask_branch=False`` is an HMAR stage-1 model: block-diagonal attention (no KV cache),
    next-scale prediction only (the official stage-1 checkpoints).
    """

    depth: int = 16
    width: int = 0
    heads: int = 0
    n_layers_train: int = 8
    kind: Literal["hmar", "var"] = "hmar"
    mask_branch: bool = True
    num_classes: int = 1000
    vocab_size: int = 4096
    latent_channels: int = 32
    patch_nums: tuple[int, ...] = PATCH_NUMS["256"]
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    drop_path_rate: float = -1.0
    max_scale_mul: float = math.log(100.0)
    #: kernels.attention backend of the teacher-forced (masked) passes; "auto" picks Triton for
    #: bf16/fp16 on CUDA. Benchmarks set "reference"/"triton" to compare (not a model property).
    attention_backend: Literal["auto", "reference", "flex", "triton"] = "auto"
    head_dim: int = field(init=False)
    seq_len: int = field(init=False)
    num_scales: int = field(init=False)

    def __post_init__(self) -> None:
        _check_positive(self, ("depth",))
        _check_positive(self, ("width", "heads"), minimum=0)  # 0 = the official default
        if self.width == 0:
            object.__setattr__(self, "width", 64 * self.depth)
        if self.heads == 0:
            object.__setattr__(self, "heads", self.depth)
        _check_float(self, "drop_path_rate", -math.inf, 1.0, high_open=True)
        if self.drop_path_rate < 0:
            object.__setattr__(self, "drop_path_rate", 0.1 * self.depth / 24)
        if self.kind not in ("hmar", "var"):
            raise ValueError(f"TransformerConfig.kind must be 'hmar' or 'var', got {self.kind!r}")
        if self.kind == "var" and self.n_layers_train != 0:
            object.__setattr__(self, "n_layers_train", 0)
        _check_positive(self, ("num_classes", "vocab_size", "latent_channels"))
        _check_positive(self, ("n_layers_train",), minimum=0)
        if self.width % self.heads:
            raise ValueError(f"TransformerConfig.width {self.width} not divisible by "
                             f"heads {self.heads}")
        if self.kind == "hmar" and not 1 <= self.n_layers_train <= self.depth:
            raise ValueError(f"TransformerConfig.n_layers_train must be in "
                             f"[1, depth={self.depth}], got {self.n_layers_train}")
        _check_patch_nums(self)
        _check_float(self, "mlp_ratio", 0.0, math.inf, low_open=True)
        _check_float(self, "norm_eps", 0.0, 1.0, low_open=True)
        _check_float(self, "max_scale_mul", 0.0, math.inf, low_open=True)
        if self.attention_backend not in ("auto", "reference", "flex", "triton"):
            raise ValueError(f"attention_backend must be auto, reference, flex or triton, "
                             f"got {self.attention_backend!r}")
        object.__setattr__(self, "head_dim", self.width // self.heads)
        object.__setattr__(self, "seq_len", sum(p * p for p in self.patch_nums))
        object.__setattr__(self, "num_scales", len(self.patch_nums))

    @property
    def null_class(self) -> int:
        """Index of the unconditional class (the last row of the class embedding)."""
        return self.num_classes

    @property
    def has_mask_branch(self) -> bool:
        return self.kind == "hmar" and self.mask_branch

    @property
    def attention_pattern(self) -> Literal["block_diagonal", "block_causal"]:
        return "block_diagonal" if self.kind == "hmar" else "block_causal"

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> TransformerConfig:
        """A named preset (``"hmar-d16"``, ``"hmar-d30-512"``, ``"var-d16"``, ``"tiny"``, ...)."""
        if name not in _TRANSFORMER_PRESETS:
            raise ValueError(f"unknown transformer preset {name!r}; "
                             f"known: {sorted(_TRANSFORMER_PRESETS)}")
        return cls(**{**_TRANSFORMER_PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """A stored config: ``width`` and ``heads`` must be explicit (``to_dict`` writes them)."""
        if isinstance(data, Mapping):
            for name in ("width", "heads"):
                if name in data and data[name] == 0:
                    raise ValueError(f"TransformerConfig.{name} must be a positive int in a "
                                     "stored config, got 0")
        return super().from_dict(data)


@dataclass(frozen=True)
class SamplerConfig(_Serializable):
    """Sampling settings. Defaults are the official ones without a YAML file.

    ``mask_cfg_ratio``: the guidance weight of masked refinement steps is ``cfg *
    mask_cfg_ratio`` (the official code hard-codes 1e-6, i.e. practically none).
    ``mask_schedule``: one list per scale; entry j = tokens finalised at step j (official
    semantics); ``None`` uses ``steps`` (see :func:`hmar_core.sampler.schedule_from_steps`),
    or the official default schedule when that is ``None`` too.
    ``refine_max_side``: the largest scale side that the ``steps`` knob refines (``None``:
    max(2, last side / 2)); a model sets it where its measured curve says refinement of finer
    scales stops helping (the bundled demo model: 3).
    ``class_strength`` / ``class_revise``: a model's defaults for class edits, the coarse
    scales kept from the source and the revision threshold in nats (``None``: the library's,
    :func:`hmar_core.editing.default_class_strength` and
    :data:`hmar_core.editing.DEFAULT_CLASS_REVISE`); a model sets them from its measured
    class-edit success (the bundled demo model: 1 and -1).
    """

    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    mask_cfg_ratio: float = 1e-6
    mask_schedule: tuple[tuple[int, ...], ...] | None = None
    steps: int | None = None
    refine_max_side: int | None = None
    class_strength: int | None = None
    class_revise: float | None = None

    def __post_init__(self) -> None:
        if not _is_real(self.cfg) or not math.isfinite(self.cfg) or not 0 <= self.cfg <= MAX_CFG:
            raise ValueError(f"cfg must be a number in [0, {MAX_CFG}], got {self.cfg}")
        _check_positive(self, ("top_k",), minimum=0)  # 0 disables
        if not _is_real(self.top_p) or not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1] (0 disables), got {self.top_p!r}")
        if (not _is_real(self.mask_cfg_ratio) or not math.isfinite(self.mask_cfg_ratio)
                or self.mask_cfg_ratio < 0):
            raise ValueError(f"mask_cfg_ratio must be >= 0, got {self.mask_cfg_ratio!r}")
        if self.steps is not None:
            _check_positive(self, ("steps",), minimum=0)
        if self.refine_max_side is not None:
            _check_positive(self, ("refine_max_side",), minimum=2)
        if self.class_strength is not None:
            _check_positive(self, ("class_strength",), minimum=0)
        if self.class_revise is not None and (not _is_real(self.class_revise)
                                              or not math.isfinite(self.class_revise)):
            raise ValueError(f"class_revise must be a finite number (nats) or None, got "
                             f"{self.class_revise!r}")
        if self.class_revise is not None:
            object.__setattr__(self, "class_revise", float(self.class_revise))
        if self.mask_schedule is not None:
            object.__setattr__(self, "mask_schedule", _schedule_shape(self.mask_schedule))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.mask_schedule is not None:
            out["mask_schedule"] = [list(e) for e in self.mask_schedule]
        return out


def _is_real(value: object) -> bool:
    """A real number, numpy scalars included (not a bool, a string or None)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_int(value: object) -> bool:
    return _is_real(value) and math.isfinite(value) and int(value) == value  # type: ignore[arg-type]


def _check_positive(cfg: object, names: tuple[str, ...], minimum: int = 1) -> None:
    """Each field must be a whole number >= ``minimum``; stored as an ``int``."""
    for name in names:
        value = getattr(cfg, name)
        if not _is_int(value) or value < minimum:
            kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
            raise ValueError(f"{type(cfg).__name__}.{name} must be {kind}, got {value!r}")
        object.__setattr__(cfg, name, int(value))


def _check_float(cfg: object, name: str, low: float, high: float, *,
                 low_open: bool = False, high_open: bool = False) -> None:
    """The field must be a finite number in [low, high] (``(`` / ``)`` where open)."""
    value = getattr(cfg, name)
    inside = _is_real(value) and math.isfinite(value) and low <= value <= high and not (
        (low_open and value == low) or (high_open and value == high))
    if not inside:
        span = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{type(cfg).__name__}.{name} must be a finite number in {span}, "
                         f"got {value!r}")


def _check_int_tuple(cfg: object, name: str) -> None:
    """A non-empty sequence of positive ints, stored as a tuple."""
    values = getattr(cfg, name)
    if (isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__iter__")
            or not values or not all(_is_int(v) and v >= 1 for v in values)):
        raise ValueError(f"{type(cfg).__name__}.{name} must be a non-empty list of positive "
                         f"ints, got {values!r}")
    object.__setattr__(cfg, name, tuple(int(v) for v in values))


def _check_patch_nums(cfg: TokenizerConfig | TransformerConfig) -> None:
    _check_int_tuple(cfg, "patch_nums")
    patch_nums = cfg.patch_nums
    if any(b <= a for a, b in zip(patch_nums, patch_nums[1:])):
        raise ValueError(f"{type(cfg).__name__}.patch_nums must be strictly increasing, "
                         f"got {patch_nums}")


def _schedule_shape(schedule: object) -> tuple[tuple[int, ...], ...]:
    """A mask schedule as a tuple of non-empty tuples of positive ints (sums are checked
    against the pyramid by :func:`hmar_core.schedules.validate_schedule`)."""
    entries = schedule if isinstance(schedule, (list, tuple)) else None
    if not entries or not all(
            isinstance(e, (list, tuple)) and e and all(_is_int(a) and a >= 1 for a in e)
            for e in entries):
        raise ValueError("SamplerConfig.mask_schedule must be a list of non-empty lists of "
                         f"positive ints (one per scale), got {schedule!r}"[:300])
    return tuple(tuple(int(a) for a in entry) for entry in entries)


_TOKENIZER_PRESETS: dict[str, dict[str, Any]] = {
    "vae-ch160v4096z32": {},
    "vae-ch160v4096z32-512": {"patch_nums": PATCH_NUMS["512"]},
    "vae-ch160v4096z32-1024": {"patch_nums": PATCH_NUMS["1024"]},
    # Ours: 64 px images on a 16x16 latent grid (downsample 4), the official 10-scale pyramid.
    "emoji64": {"channels": 64, "channel_mult": (1, 2, 4), "num_res_blocks": 2,
                "vocab_size": 4096},
    "tiny": {"channels": 32, "channel_mult": (1, 1, 2), "num_res_blocks": 1, "vocab_size": 64,
             "latent_channels": 8, "patch_nums": (1, 2, 3, 4)},
}

_TRANSFORMER_PRESETS: dict[str, dict[str, Any]] = {
    **{f"hmar-d{d}": {"depth": d} for d in (16, 20, 24, 30)},
    **{f"hmar-d{d}-512": {"depth": d, "patch_nums": PATCH_NUMS["512"]}
       for d in (16, 20, 24, 30, 36)},
    **{f"hmar-d{d}-1024": {"depth": d, "patch_nums": PATCH_NUMS["1024"]} for d in (16, 20, 24, 30)},
    **{f"var-d{d}": {"depth": d, "kind": "var", "n_layers_train": 0} for d in (16, 20, 24, 30)},
    # Ours: the bundled emoji demo (51 classes) and a tiny test model.
    "emoji-d8": {"depth": 8, "width": 384, "heads": 6, "n_layers_train": 3, "num_classes": 51},
    "tiny": {"depth": 2, "width": 32, "heads": 2, "n_layers_train": 1, "num_classes": 10,
             "vocab_size": 64, "latent_channels": 8, "patch_nums": (1, 2, 3, 4)},
}
