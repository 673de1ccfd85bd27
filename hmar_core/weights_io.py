"""Safetensors files of one component, whole or split into shards.

A component ``name`` is stored as ``name.safetensors`` or, when larger than ``max_shard_bytes``,
as ``name-00001-of-00003.safetensors`` … (tensors are never split; a shard holds whole tensors).
Writes go through a temporary file and an atomic rename; stale files of the other layout are
removed so a folder never holds two versions.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checkpoint import CheckpointError, require_regular_file

__all__ = ["DEFAULT_SHARD_BYTES", "load_weights", "save_weights"]

DEFAULT_SHARD_BYTES = 15 * 2**20


def _shard_name(name: str, index: int, count: int) -> str:
    return f"{name}-{index:05d}-of-{count:05d}.safetensors"


def _existing(folder: Path, name: str) -> list[Path]:
    pattern = re.compile(rf"^{re.escape(name)}(-\d{{5}}-of-\d{{5}})?\.safetensors$")
    return sorted(p for p in folder.iterdir() if pattern.match(p.name))


def save_weights(
    tensors: dict[str, torch.Tensor],
    folder: Path,
    name: str,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> list[Path]:
    """Write one component's tensors; returns the files written."""
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][key] = value
        size += nbytes
    names = ([f"{name}.safetensors"] if len(groups) == 1
             else [_shard_name(name, i + 1, len(groups)) for i in range(len(groups))])
    stale = [p for p in _existing(folder, name) if p.name not in names]
    written = []
    for group, file_name in zip(groups, names):
        tmp = folder / f".{file_name}.tmp"
        save_file(group, str(tmp), metadata={"format": "pt", "hmar_studio": name})
        tmp.replace(folder / file_name)
        written.append(folder / file_name)
    for path in stale:
        path.unlink()
    return written


def load_weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """Read one component (whole file or a complete set of shards).

    Raises:
        CheckpointError: no file, an incomplete shard set, duplicate keys, unreadable data, or
            a file that is not a regular file (a FIFO would block the reader forever).
    """
    files = _existing(folder, name) if folder.is_dir() else []
    if not files:
        raise CheckpointError(f"cannot read {folder / (name + '.safetensors')}: no such file")
    if len(files) > 1 or files[0].name != f"{name}.safetensors":
        counts = {int(p.name.rsplit("-of-", 1)[1].split(".")[0]) for p in files
                  if "-of-" in p.name}
        if len(counts) != 1 or len(files) != counts.pop() or any("-of-" not in p.name
                                                                for p in files):
            raise CheckpointError(f"{folder}: incomplete or mixed shard set for {name}: "
                                  f"{[p.name for p in files]}")
    for path in files:
        require_regular_file(path, "weights file")
    out: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            part = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot read {path}: {err}") from err
        duplicate = sorted(set(part) & set(out))
        if duplicate:
            raise CheckpointError(f"{path}: keys already in another shard: {duplicate[:5]}")
        out.update(part)
    return out
