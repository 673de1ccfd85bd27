"""Finding the image files of an ImageFolder class, safely through symbolic links.

Linked folders are followed (a class folder may be a link to data elsewhere), but every folder
is entered at most once, by its real path: a link to itself, to an ancestor, or a loop of links
can neither hang the scan nor list the same files again. A folder that would put images of the
dataset root or of another class under this class's label (a link to ``..``, to the root, or
into a sibling class) is skipped with a warning.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path

__all__ = ["scan_class_folder"]

logger = logging.getLogger(__name__)


def _within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or inside it (both real, absolute paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _refusal(real: str, root: str, others: Sequence[str]) -> str | None:
    """Why a folder must not be scanned for this class, or ``None``."""
    if _within(root, real):
        return "it holds the dataset root (a link to the root or above it)"
    for other in others:
        if _within(real, other) or _within(other, real):
            return f"it overlaps the class folder {other}"
    return None


def scan_class_folder(folder: Path, suffixes: tuple[str, ...], root: Path,
                      other_classes: Sequence[Path] = ()) -> list[Path]:
    """Image files under ``folder``, sorted by their path relative to it.

    Args:
        folder: the class folder (may itself be a link).
        suffixes: lowercase file name endings counted as images.
        root: the dataset root (never scanned as part of a class).
        other_classes: the other class folders of the dataset (never scanned as this one).

    Returns:
        Paths as reached through ``folder`` (links kept in the path), hidden names skipped.
    """
    if not folder.is_dir():
        return []
    root_real = os.path.realpath(root)
    others = [os.path.realpath(p) for p in other_classes]
    visited: set[str] = set()
    found: list[Path] = []
    pending = deque([folder])  # breadth first: a real folder is met before deeper links to it
    while pending:
        directory = pending.popleft()
        real = os.path.realpath(directory)
        if real in visited:
            logger.warning("%s: skipping %s, a link to a folder already scanned (%s)", folder,
                           directory, real)
            continue
        reason = (_refusal(real, root_real, others) if directory != folder
                  else _refusal(real, root_real, ()))
        if reason is not None:
            logger.warning("%s: skipping linked folder %s: %s", folder, directory, reason)
            continue
        visited.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as err:
            logger.warning("%s: cannot list %s (%s)", folder, directory, err)
            continue
        linked = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError:  # a dangling link or a loop of links
                continue
            if is_dir:
                (linked if entry.is_symlink() else pending).append(Path(entry.path))
            elif is_file and entry.name.lower().endswith(suffixes):
                found.append(Path(entry.path))
        pending.extend(linked)  # plain folders first: the same files keep their plain path
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())
