"""Loading the official checkpoints: which model a file holds, and its sampling defaults.

The official ``.pth`` files come in three layouts (spec §2.5-2.6):

* HMAR (``base_blocks`` / ``ns_blocks`` / ``mask_blocks``): the released ``hmar-dX.pth``;
* stage 1 + stage 2 (``blocks.*`` twice): merged into HMAR with ``n_layers_train`` branch
  blocks;
* ``blocks.*`` alone: either an **HMAR stage-1** model (block-diagonal attention, next-scale
  prediction only, no KV cache) or a **VAR** model (block-causal attention, KV cache). The keys
  are the same; only the ``attn_bias_for_masking`` buffer, when the file has it, tells them
  apart. The caller says which with ``kind``; without it a file whose buffer does not tell is
  refused rather than guessed, and a ``kind`` that contradicts the buffer is an error.

Converted models sample with the official per-model defaults (spec §3.5: cfg, top-k, top-p,
the official mask schedule and mask-step guidance), not ours.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from . import checkpoint as ckpt
from .config import SamplerConfig, TransformerConfig
from .pipeline import Pipeline

__all__ = ["OFFICIAL_KINDS", "load_official", "official_sampler_config", "stage1_kind"]

logger = logging.getLogger(__name__)

OfficialKind = Literal["hmar", "hmar-stage1", "var"]
OFFICIAL_KINDS: tuple[str, ...] = ("hmar", "hmar-stage1", "var")

#: Official sampling settings per HMAR depth (``config/sample/hmar-dX.yaml``, spec §3.5).
_HMAR_SAMPLE = {16: (1.7, 1000, 0.99), 20: (1.9, 950, 0.99), 24: (2.1, 900, 0.99),
                30: (1.7, 1000, 0.99)}
#: The official arguments' defaults without a YAML file (and VAR's recommended FID setting).
_ARGS_DEFAULT = (1.5, 900, 0.96)
#: The official mask-step guidance factor (``1e-6 · cfg``, spec §8).
_OFFICIAL_MASK_CFG_RATIO = 1e-6


def official_sampler_config(cfg: TransformerConfig) -> SamplerConfig:
    """The official sampling defaults of a converted model.

    HMAR d16/d20/d24/d30 get their ``config/sample`` settings, other HMAR depths and VAR the
    official argument defaults; the mask schedule is the official default (``steps=None``)
    and mask steps use the official guidance factor.
    """
    key = cfg.depth if cfg.kind == "hmar" else None
    guidance, top_k, top_p = _HMAR_SAMPLE.get(key, _ARGS_DEFAULT) if key else _ARGS_DEFAULT
    return SamplerConfig(cfg=guidance, top_k=top_k, top_p=top_p,
                         mask_cfg_ratio=_OFFICIAL_MASK_CFG_RATIO)


def stage1_kind(sd: Mapping[str, torch.Tensor]) -> OfficialKind | None:
    """What a ``blocks.*`` file's ``attn_bias_for_masking`` says: ``"hmar-stage1"`` for a
    block-diagonal bias, ``"var"`` for a block-causal one, ``None`` when it cannot tell."""
    bias = sd.get("attn_bias_for_masking")
    if not isinstance(bias, torch.Tensor) or bias.dim() < 2 or bias.shape[-1] != bias.shape[-2]:
        return None
    allowed = torch.isfinite(bias.reshape(bias.shape[-2:]).float())
    if bool(allowed.all()):
        return None  # one scale: both patterns are the same
    if bool(torch.equal(allowed, allowed.T)):
        return "hmar-stage1"  # symmetric: every scale sees only itself
    ends = allowed.sum(-1, keepdim=True)
    prefix = torch.arange(allowed.shape[-1], device=allowed.device) < ends
    if bool(torch.equal(allowed, prefix)):
        return "var"  # each scale sees itself and every coarser scale
    return None


def _resolve_kind(official: Mapping[str, torch.Tensor], kind: str | None,
                  path: str | Path) -> OfficialKind:
    if kind is not None and kind not in OFFICIAL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(OFFICIAL_KINDS)}; got {kind!r}")
    if any(k.startswith(("base_blocks.", "ns_blocks.")) for k in official):
        if kind not in (None, "hmar"):
            raise ckpt.CheckpointError(f"{path}: an HMAR checkpoint, not {kind!r}")
        return "hmar"
    if not any(k.startswith("blocks.") for k in official):
        raise ckpt.CheckpointError(f"{path}: neither an HMAR nor a VAR/stage-1 checkpoint")
    told = stage1_kind(official)
    if kind is None:
        if told is None:
            raise ckpt.CheckpointError(
                f"{path}: a blocks.* checkpoint can be an HMAR stage-1 model or a VAR model, and "
                "this file does not say which: pass kind='hmar-stage1' or kind='var'")
        logger.info("%s: attention bias says %s", path, told)
        return told
    if kind == "hmar":
        raise ckpt.CheckpointError(f"{path}: a blocks.* (stage-1/VAR) checkpoint, not HMAR; "
                                   "pass kind='hmar-stage1' or kind='var', or add mask_path")
    if told is not None and told != kind:
        raise ckpt.CheckpointError(f"{path}: kind={kind!r}, but its attention bias is that of "
                                   f"{told!r}")
    return kind  # type: ignore[return-value]


def load_official(
    vae_path: str | Path,
    hmar_path: str | Path,
    *,
    mask_path: str | Path | None = None,
    kind: str | None = None,
    n_layers_train: int = 8,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    engine: str = "auto",
    sampler_config: SamplerConfig | None = None,
    engine_options: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Pipeline:
    """Load official checkpoints, inferring the configuration from tensor shapes.

    Args:
        vae_path: the VQVAE ``.pth`` (e.g. ``vae_ch160v4096z32.pth``).
        hmar_path: an HMAR ``.pth`` (``base_blocks``/``ns_blocks``/``mask_blocks``), or a
            stage-1 / VAR ``.pth`` (``blocks.*``).
        mask_path: a stage-2 ``.pth``: merged with the stage-1 ``hmar_path`` into HMAR with
            ``n_layers_train`` branch blocks.
        kind: for a ``blocks.*`` file alone, ``"hmar-stage1"`` or ``"var"`` (required when the
            file's attention bias does not tell; see the module docstring).
        device, dtype, engine: as :meth:`Pipeline.from_pretrained` (the fast engine casts the
            blocks while loading: no float32 copy of them reaches the device).
        sampler_config: sampling defaults (default: the official ones for this model).
        engine_options: :class:`~hmar_core.fast.FastEngine` options (e.g. ``fp8=True``).
        overrides: transformer config fields to force (e.g. ``patch_nums``).

    Returns:
        A :class:`Pipeline` in eval mode.
    """
    vae_sd = ckpt.convert_official_vqvae_state_dict(ckpt.load_torch_weights(vae_path))
    official = ckpt.load_torch_weights(hmar_path)
    if mask_path is not None:
        if kind not in (None, "hmar"):
            raise ValueError(f"mask_path merges stage 1 and 2 into HMAR; kind={kind!r} "
                             "contradicts it")
        official = ckpt.merge_official_stage_state_dicts(
            official, ckpt.load_torch_weights(mask_path), n_layers_train)
        resolved: OfficialKind = "hmar"
    else:
        resolved = _resolve_kind(official, kind, hmar_path)
    if resolved == "var":
        transformer_sd = ckpt.convert_official_var_state_dict(official)
    elif resolved == "hmar-stage1":
        depth = len({k.split(".")[1] for k in official if k.startswith("blocks.")})
        branch = min(n_layers_train, depth)
        transformer_sd = ckpt.convert_official_hmar_state_dict(
            ckpt.merge_official_stage_state_dicts(official, None, branch))
        overrides = {"kind": "hmar", "mask_branch": False, **overrides}
    else:
        transformer_sd = ckpt.convert_official_hmar_state_dict(official)
    transformer_cfg = ckpt.infer_transformer_config(transformer_sd, **overrides)
    tokenizer_cfg = ckpt.infer_tokenizer_config(vae_sd, patch_nums=transformer_cfg.patch_nums)
    sampler = sampler_config or official_sampler_config(transformer_cfg)
    return Pipeline.from_state_dicts(tokenizer_cfg, vae_sd, transformer_cfg, transformer_sd,
                                     sampler, device=device, dtype=dtype, engine=engine,
                                     **dict(engine_options or {}))
