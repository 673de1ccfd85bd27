"""What training hands on: a tokenizer folder, and full model folders for the pipeline.

* Tokenizer folder: ``config.json`` (``{"format_version", "tokenizer": {...}}``) and
  ``tokenizer.safetensors`` — the same two names a :class:`~hmar_core.pipeline.Pipeline` folder
  uses, so :func:`load_tokenizer` also reads the tokenizer out of a full model folder.
* Model folder: :meth:`Pipeline.save_pretrained`, which :meth:`Pipeline.from_pretrained` and the
  app load.
* :func:`load_transformer_weights` reads a transformer state dict from a model folder or from
  a training checkpoint (to start stage 2 from stage 1, or to fine-tune).
* :func:`export_checkpoint` (``python -m train.export``) turns any training checkpoint into a
  tokenizer or model folder, e.g. from a run that was stopped early.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from hmar_core import CheckpointError, Pipeline, SamplerConfig
from hmar_core.checkpoint import load_into
from hmar_core.config import TokenizerConfig, TransformerConfig
from hmar_core.tokenizer import MultiScaleVQTokenizer
from hmar_core.transformer import HMARTransformer
from hmar_core.weights_io import load_weights

__all__ = [
    "derived_config",
    "export_checkpoint",
    "export_pipeline",
    "export_sampler_config",
    "export_tokenizer",
    "load_tokenizer",
    "load_transformer_weights",
]

FORMAT_VERSION = 1

logger = logging.getLogger(__name__)


def _cpu_tensors(module: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
            .detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _reason(err: Exception) -> str:
    """One line on why a file could not be read (torch's messages span several lines)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def export_tokenizer(tokenizer: MultiScaleVQTokenizer, folder: str | os.PathLike) -> Path:
    """Write ``config.json`` + ``tokenizer.safetensors`` (float32) atomically into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".tokenizer.safetensors.tmp"
    save_file(_cpu_tensors(tokenizer, None), str(tmp),
              metadata={"format": "pt", "hmar_studio": "tokenizer"})
    tmp.replace(folder / "tokenizer.safetensors")
    config = {"format_version": FORMAT_VERSION, "tokenizer": tokenizer.cfg.to_dict()}
    tmp = folder / ".config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(folder / "config.json")
    return folder


def load_tokenizer(folder: str | os.PathLike, device: torch.device | str = "cpu"
                   ) -> MultiScaleVQTokenizer:
    """The tokenizer of a tokenizer folder or a full model folder, in eval mode.

    The weights may be one ``tokenizer.safetensors`` or a set of shards
    (``tokenizer-00001-of-0000N.safetensors`` …, as ``python -m hmar_core convert`` writes
    for large tokenizers); :func:`hmar_core.weights_io.load_weights` reads both.

    Raises:
        CheckpointError: missing files, bad config, or weights that do not fit.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not folder.is_dir() or not config_path.is_file():
        raise CheckpointError(f"{folder} is not a tokenizer folder (needs config.json and "
                              "tokenizer.safetensors; train one with python -m train.tokenizer)")
    try:
        cfg = TokenizerConfig.from_dict(json.loads(config_path.read_text())["tokenizer"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{config_path}: invalid tokenizer config ({err})") from err
    state = load_weights(folder, "tokenizer")
    with torch.device("meta"):
        tokenizer = MultiScaleVQTokenizer(cfg)
    load_into(tokenizer, state, "tokenizer")
    return tokenizer.to(device=device, dtype=torch.float32).eval()


def load_transformer_weights(path: str | os.PathLike, cfg: TransformerConfig
                             ) -> dict[str, torch.Tensor]:
    """A transformer state dict from a model folder or an HMAR training checkpoint.

    Args:
        path: a folder written by :meth:`Pipeline.save_pretrained`, a run folder containing
            ``model/``, or a ``ckpt-*.pt`` of ``python -m train.hmar``.
        cfg: the expected configuration (must match the saved one).

    Raises:
        CheckpointError: nothing loadable there, or a different architecture.
    """
    path = Path(path)
    if path.is_dir() and (path / "model" / "config.json").is_file():
        path = path / "model"
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{path} has no config.json (expected a model folder)")
        try:
            saved = json.loads(config_path.read_text()).get("transformer")
        except (json.JSONDecodeError, AttributeError, RecursionError) as err:
            raise CheckpointError(f"{config_path}: invalid model config ({err})") from err
        state = load_weights(path, "transformer")  # one file or shards
    elif path.is_file():
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - report any unreadable file the same way
            raise CheckpointError(f"cannot read checkpoint {path}: {_reason(err)}") from err
        if not isinstance(ckpt, dict) or "model" not in ckpt or ckpt.get("kind") != "hmar":
            raise CheckpointError(f"{path} is not an HMAR training checkpoint")
        saved, state = ckpt["config"]["transformer"], ckpt["model"]
    else:
        raise CheckpointError(f"init_from path {path} does not exist")
    if saved is not None and TransformerConfig.from_dict(saved) != cfg:
        raise CheckpointError(f"{path}: saved transformer config {saved} differs from the "
                              f"configured one {cfg.to_dict()}")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def export_pipeline(
    tokenizer: MultiScaleVQTokenizer,
    transformer: HMARTransformer,
    folder: str | os.PathLike,
    *,
    class_names: Sequence[str] | None,
    sampler_config: SamplerConfig | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a model folder that :meth:`Pipeline.from_pretrained` loads.

    The modules are copied (the training ones keep their dtype, device and mode).
    """
    with torch.device("meta"):
        tok_copy = MultiScaleVQTokenizer(tokenizer.cfg)
        net_copy = HMARTransformer(transformer.cfg)
    load_into(tok_copy, _cpu_tensors(tokenizer, None), "tokenizer")
    load_into(net_copy, _cpu_tensors(transformer, None), "transformer")
    names = list(class_names) if class_names is not None else None
    if names is not None and len(names) != transformer.cfg.num_classes:
        names = None
    pipeline = Pipeline(tok_copy, net_copy, sampler_config, names)
    folder = Path(folder)
    pipeline.save_pretrained(folder, dtype=dtype)
    return folder


def derived_config(source: str | os.PathLike, folder: str | os.PathLike, take: Sequence[str],
                   drop: Sequence[str] = ()) -> None:
    """Give the model ``folder`` (derived from the model folder ``source``) the source's
    ``config.json`` entries (class titles, empty classes, ...) except the ``take`` entries,
    which stay ``folder``'s own, and the ``drop`` entries, which no longer apply."""
    config = json.loads((Path(source) / "config.json").read_text())
    written = json.loads((Path(folder) / "config.json").read_text())
    for key in take:
        config[key] = written[key]
    for key in drop:
        config.pop(key, None)
    tmp = Path(folder) / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(Path(folder) / "config.json")


def export_sampler_config(stage: str, cfg_scale: float) -> SamplerConfig:
    """Sampling defaults stored with a model: no mask steps after stage 1 (mask branch
    untrained), the official default schedule otherwise."""
    return SamplerConfig(cfg=cfg_scale, steps=0 if stage == "stage1" else None)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tokenizer_path: str | os.PathLike | None = None,
    use_ema: bool = True,
    dtype: torch.dtype | None = torch.bfloat16,
) -> Path:
    """Export a training checkpoint of ``train.tokenizer`` or ``train.hmar`` as a folder.

    Args:
        checkpoint: a ``ckpt-*.pt`` file.
        out: the folder to write.
        tokenizer_path: the tokenizer of an HMAR run (default: the one the run used).
        use_ema: export the weight average when the run kept one.
        dtype: weight dtype of a model folder (tokenizer folders are float32).

    Raises:
        CheckpointError: the file is not a training checkpoint.
    """
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report any unreadable file the same way
        raise CheckpointError(f"cannot read checkpoint {checkpoint}: {_reason(err)}") from err
    if not isinstance(ckpt, dict) or ckpt.get("kind") not in ("tokenizer", "hmar"):
        raise CheckpointError(f"{checkpoint} is not a training checkpoint")
    state = dict(ckpt["model"])
    if use_ema and ckpt.get("ema"):
        state.update(ckpt["ema"]["shadow"])
        logger.info("exporting the EMA weights of step %d", ckpt["step"])
    if ckpt["kind"] == "tokenizer":
        cfg = TokenizerConfig.from_dict(ckpt["config"]["tokenizer"])
        with torch.device("meta"):
            tokenizer = MultiScaleVQTokenizer(cfg)
        load_into(tokenizer, state, "tokenizer")
        return export_tokenizer(tokenizer, out)
    train_cfg = ckpt["config"]["train"]
    transformer_cfg = TransformerConfig.from_dict(ckpt["config"]["transformer"])
    with torch.device("meta"):
        transformer = HMARTransformer(transformer_cfg)
    load_into(transformer, {k: v.float() for k, v in state.items()}, "transformer")
    tokenizer = load_tokenizer(tokenizer_path or train_cfg["tokenizer_path"])
    return export_pipeline(
        tokenizer, transformer, out, class_names=ckpt.get("class_names"),
        sampler_config=export_sampler_config(train_cfg["stage"], train_cfg["sample_cfg"]),
        dtype=dtype)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m train.export --checkpoint runs/x/checkpoints/ckpt-00001000.pt --out dir``
    (exit status 0, or 2 after a one-line error)."""
    parser = argparse.ArgumentParser(prog="python -m train.export",
                                     description="Export a training checkpoint as a folder.")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder of an HMAR run")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        folder = export_checkpoint(args.checkpoint, args.out, tokenizer_path=args.tokenizer,
                                   use_ema=not args.no_ema,
                                   dtype=torch.bfloat16 if args.dtype == "bf16" else None)
    except (ValueError, OSError) as err:  # CheckpointError is a ValueError
        logger.error("%s", " ".join(str(err).split()) or type(err).__name__)
        return 2
    logger.info("wrote %s", folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
