"""``config.json`` of a model folder: read with bounds, validated before any weight is touched.

A model folder (written by :meth:`hmar_core.Pipeline.save_pretrained`) holds ``config.json``::

    {"format_version": 1, "tokenizer": {...}, "transformer": {...}, "sampler": {...},
     "class_names": ["...", ...]}

The file comes from wherever the folder came from, so it is treated as untrusted: it must be a
regular file (a FIFO would block the reader forever) of at most :data:`MAX_CONFIG_BYTES`,
nesting deeper than Python's recursion limit is a :class:`CheckpointError` (not a
``RecursionError``), and every value is validated here, naming the field: the config
dataclasses check their own fields, this module checks what relates them (format version,
tokenizer vs transformer, mask schedule vs pyramid, one class name per class).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, require_regular_file
from .config import SamplerConfig, TokenizerConfig, TransformerConfig
from .schedules import validate_schedule

__all__ = ["FORMAT_VERSION", "MAX_CONFIG_BYTES", "FolderConfig", "read_folder_config"]

#: The folder layout version written by ``save_pretrained``; any other value is refused.
FORMAT_VERSION = 1
#: Largest ``config.json`` read (1 MiB; a 1000-class model's config is about 30 KB).
MAX_CONFIG_BYTES = 2**20


@dataclass(frozen=True)
class FolderConfig:
    """The validated contents of a model folder's ``config.json``."""

    tokenizer: TokenizerConfig
    transformer: TransformerConfig
    sampler: SamplerConfig
    class_names: tuple[str, ...] | None


def _load_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"{path.parent} is not an HMAR Studio model folder "
                              "(no config.json)")
    require_regular_file(path, "model config")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: invalid config ({size} bytes, above the "
                              f"{MAX_CONFIG_BYTES} byte limit)")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except RecursionError:
        raise CheckpointError(f"{path}: invalid config (JSON nested too deeply)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: invalid config (not JSON: {err})") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: invalid config (a JSON object is needed, "
                              f"got {type(data).__name__})")
    return data


def _section(data: Mapping[str, Any], name: str, cls: type, required: bool = True) -> Any:
    if name not in data:
        if required:
            raise ValueError(f"missing section {name!r}")
        return cls()
    try:
        return cls.from_dict(data[name])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: {err}") from None


def _check_format_version(data: Mapping[str, Any]) -> None:
    version = data.get("format_version", FORMAT_VERSION)  # folders before versioning are 1
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise ValueError(f"format_version {version!r} is not supported (this version reads "
                         f"{FORMAT_VERSION}); upgrade HMAR Studio or re-export the model")


def _class_names(value: object, num_classes: int) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("class_names must be a list of strings")
    if len(value) != num_classes:
        raise ValueError(f"class_names holds {len(value)} names but the transformer has "
                         f"num_classes={num_classes}")
    return tuple(value)


def _validate(data: Mapping[str, Any]) -> FolderConfig:
    _check_format_version(data)
    tokenizer = _section(data, "tokenizer", TokenizerConfig)
    transformer = _section(data, "transformer", TransformerConfig)
    sampler = _section(data, "sampler", SamplerConfig, required=False)
    if tokenizer.patch_nums != transformer.patch_nums:
        raise ValueError(f"tokenizer.patch_nums {tokenizer.patch_nums} != "
                         f"transformer.patch_nums {transformer.patch_nums}")
    for name in ("vocab_size", "latent_channels"):
        if getattr(tokenizer, name) != getattr(transformer, name):
            raise ValueError(f"tokenizer.{name} {getattr(tokenizer, name)} != "
                             f"transformer.{name} {getattr(transformer, name)}")
    if sampler.mask_schedule is not None:
        try:
            validate_schedule(sampler.mask_schedule, transformer.patch_nums)
        except ValueError as err:
            raise ValueError(f"sampler.mask_schedule: {err}") from None
    names = _class_names(data.get("class_names"), transformer.num_classes)
    return FolderConfig(tokenizer, transformer, sampler, names)


def read_folder_config(folder: str | Path) -> FolderConfig:
    """Read and validate ``folder/config.json``.

    Raises:
        CheckpointError: no such folder or file, not a regular file, too large, not JSON,
            nested too deeply, an unknown ``format_version``, or an invalid value (the
            message names the field, e.g. ``transformer: TransformerConfig.norm_eps ...``).
    """
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"model folder {folder} not found (no config.json)")
    path = folder / "config.json"
    data = _load_json(path)
    try:
        return _validate(data)
    except ValueError as err:
        raise CheckpointError(f"{path}: invalid config ({err})") from None
