"""Crash-safe training checkpoints and random-number-generator state.

A checkpoint is one ``torch.save`` dictionary written atomically: the bytes go to a temporary
file in the same folder, are flushed and ``fsync``-ed, and the file is renamed into place with
``os.replace`` (then the folder is ``fsync``-ed). A process killed at any moment therefore leaves
either the old set of checkpoints or the old set plus the complete new one; never a truncated
``ckpt-*.pt``. The newest two checkpoints are kept (last and previous). Loading tries the newest
first and falls back to the previous one if the newest cannot be read; when none can be read it
is an error, never a silent restart from step 0.

Files are read back with ``torch.load(weights_only=True)``: checkpoints hold only tensors and
plain Python containers (configs as dicts), never pickled objects.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hmar_core.checkpoint import CheckpointError

__all__ = [
    "CheckpointManager",
    "WriteHook",
    "atomic_save",
    "capture_rng_state",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)

WriteHook = Callable[[int, int], None]
_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(
    obj: Any,
    path: str | os.PathLike,
    *,
    chunk_bytes: int = 1 << 18,
    write_hook: WriteHook | None = None,
) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temp file + fsync + ``os.replace``).

    Args:
        obj: what to save (tensors and plain containers).
        path: destination file.
        chunk_bytes: size of the write chunks.
        write_hook: called as ``hook(bytes_written, total_bytes)`` after every chunk (tests use
            it to stall or kill a run in the middle of a write).

    Raises:
        OSError: the write failed (e.g. ``ENOSPC``, ``EFBIG``); same ``errno``, a message that
            names ``path``; the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            for start in range(0, len(data), chunk_bytes):
                handle.write(data[start:start + chunk_bytes])
                if write_hook is not None:
                    handle.flush()
                    write_hook(min(start + chunk_bytes, len(data)), len(data))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:  # disk full, file size limit, I/O error: say which file
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot write checkpoint {path} ({err.strerror or err}); "
                      "the previous checkpoints are untouched") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class CheckpointManager:
    """Numbered checkpoints ``ckpt-<step>.pt`` in one folder; the newest ``keep`` survive.

    Args:
        folder: where checkpoints live (created).
        keep: how many of the newest checkpoints to keep (2 = last + previous).
        write_hook: passed to :func:`atomic_save`.
    """

    def __init__(self, folder: str | os.PathLike, keep: int = 2,
                 write_hook: WriteHook | None = None) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.folder = Path(folder)
        self.keep = keep
        self.write_hook = write_hook

    def paths(self) -> list[Path]:
        """Checkpoint files, newest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if _NAME.match(p.name)]
        return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)

    def remove_stale_temporaries(self) -> None:
        """Delete temp files left behind by killed writers (call before a run starts)."""
        if self.folder.is_dir():
            for tmp in self.folder.glob(".ckpt-*.tmp"):
                logger.info("removing unfinished checkpoint write %s", tmp.name)
                tmp.unlink(missing_ok=True)

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write ``state`` as the checkpoint of ``step`` and prune older ones.

        The file just written is always kept, with the ``keep - 1`` newest others: a folder
        that somehow holds higher step numbers never costs the run its new checkpoint.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"ckpt-{step:08d}.pt"
        atomic_save(state, path, write_hook=self.write_hook)
        for old in [p for p in self.paths() if p != path][self.keep - 1:]:
            old.unlink(missing_ok=True)
        logger.info("saved checkpoint %s", path)
        return path

    def load_latest(self, map_location: torch.device | str = "cpu", *,
                    set_aside_unreadable: bool = False) -> tuple[dict[str, Any], Path] | None:
        """The newest checkpoint that loads, with its path; ``None`` when there is none.

        A newer file that cannot be read (it should not happen with atomic writes, but disks
        fail) is reported and the previous one is used.

        Args:
            map_location: where the tensors go.
            set_aside_unreadable: rename the unreadable files newer than the one loaded to
                ``<name>.unreadable`` (rank 0 of a resuming run), so that they are neither
                resumed from nor counted among the checkpoints kept, which would delete the
                good one.

        Raises:
            CheckpointError: there are checkpoint files but none of them can be read.
        """
        unreadable: list[Path] = []
        for path in self.paths():
            state = _read_checkpoint(path, map_location)
            if state is None:
                unreadable.append(path)
                continue
            if set_aside_unreadable:
                for bad in unreadable:
                    aside = bad.with_name(bad.name + ".unreadable")
                    bad.replace(aside)
                    logger.warning("set the unreadable %s aside as %s", bad.name, aside.name)
            return state, path
        if unreadable:
            names = ", ".join(p.name for p in unreadable[:3]) + (" ..." if len(unreadable) > 3
                                                                else "")
            raise CheckpointError(f"no readable checkpoint in {self.folder}: {len(unreadable)} "
                                  f"checkpoint files cannot be read ({names}); remove them, or "
                                  "start a new run with --overwrite")
        return None


def _read_checkpoint(path: Path, map_location: torch.device | str) -> dict[str, Any] | None:
    """The training checkpoint in ``path``, or ``None`` (logged) when it cannot be read."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file: try the previous
        logger.warning("cannot read checkpoint %s (%s: %s); trying the previous one", path,
                       type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return None
    if not isinstance(state, dict) or "step" not in state:
        logger.warning("%s is not a training checkpoint; trying the previous one", path)
        return None
    return state


def capture_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global torch RNG state of this process (CPU, and the CUDA device if used).

    The model's stochastic depth draws from these; everything else in ``train/`` uses explicit
    generators whose state is saved separately.
    """
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch_cpu"].cpu())
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"].cpu(), device)
