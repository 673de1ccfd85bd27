"""Where ``python -m hmar_core`` may write, decided before any work starts.

Rules (each refusal is a one-line ``ValueError``):

* an image output needs a known image extension (:data:`IMAGE_EXTENSIONS`), so ``--out
  result`` fails at once instead of after the whole run;
* no output may be one of the command's inputs, compared by resolved path and by
  ``os.path.samefile`` (symbolic and hard links), even with ``--overwrite``;
* an existing output is replaced only with ``--overwrite``; a folder is never an image output,
  and the nearest existing parent of an output must be a folder;
* two outputs of one command may not be the same file (``--confidence`` equal to ``--out``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "IMAGE_EXTENSIONS",
    "MODEL_FILE_NAME",
    "PREVIEW_FILE_NAME",
    "check_image_outputs",
    "check_model_folder_output",
    "check_preview_folder",
    "variant_paths",
]

#: Extensions Pillow writes by name, accepted for image outputs.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
#: Files of a model folder that ``save_pretrained`` writes or replaces.
MODEL_FILE_NAME = re.compile(
    r"^(config\.json|\.config\.json\.tmp|"
    r"\.?(tokenizer|transformer)(-\d{5}-of-\d{5})?\.safetensors(\.tmp)?)$")
#: Files the per-scale preview writer creates in ``--previews``.
PREVIEW_FILE_NAME = re.compile(r"^window\d+_scale\d+_\d+\.png$")

Inputs = Iterable[str | Path | None]


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (same resolved path, or a link to the same inode)."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:  # one of them does not exist (yet)
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a link loop names no file we could overwrite
        return False


def _existing(inputs: Inputs) -> list[Path]:
    return [Path(p) for p in inputs if p is not None and os.path.lexists(p)]


def _check_parent(path: Path, option: str) -> None:
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is not a folder")
            return


def variant_paths(out: str | Path, count: int) -> list[Path]:
    """The files of ``count`` results: ``out`` itself for one, ``OUT_0.png``, ... for several."""
    out = Path(out)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]


def check_image_outputs(
    outputs: Sequence[tuple[str, str | Path]], inputs: Inputs, overwrite: bool
) -> None:
    """Refuse image outputs that break the module's rules.

    Args:
        outputs: ``(option, path)`` pairs, e.g. ``[("--out", "a_0.png"), ("--out", "a_1.png")]``.
        inputs: the files the command reads (``None`` entries are skipped).
        overwrite: whether ``--overwrite`` was given.

    Raises:
        ValueError: naming the option and the path.
    """
    sources = _existing(inputs)
    seen: list[Path] = []
    for option, raw in outputs:
        path = Path(raw)
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"{option} {path}: needs an image extension "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        if path.is_dir():
            raise ValueError(f"{option} {path} is a folder; give an image file name")
        _check_parent(path, option)
        for source in sources:
            if _same_file(path, source):
                raise ValueError(f"{option} {path} is the input {source}; "
                                 "write the result to another file")
        if any(_same_file(path, other) for other in seen):
            raise ValueError(f"{option} {path} is written twice by this command")
        if os.path.lexists(path) and not overwrite:
            raise ValueError(f"{option} {path} exists; pass --overwrite to replace it")
        seen.append(path)


def check_preview_folder(folder: str | Path | None, inputs: Inputs, overwrite: bool) -> None:
    """``--previews`` must be a folder (or not exist yet); earlier previews in it are replaced
    only with ``--overwrite``, and an input there is never replaced."""
    if folder is None:
        return
    folder = Path(folder)
    if os.path.lexists(folder) and not folder.is_dir():
        raise ValueError(f"--previews {folder} is not a folder")
    _check_parent(folder, "--previews")
    for source in _existing(inputs):
        if PREVIEW_FILE_NAME.match(source.name) and _same_file(source.parent, folder):
            raise ValueError(f"--previews {folder} would overwrite the input {source}")
    if folder.is_dir() and not overwrite and any(
            PREVIEW_FILE_NAME.match(p.name) for p in folder.iterdir()):
        raise ValueError(f"--previews {folder} holds earlier previews; pass --overwrite to "
                         "replace them")


def check_model_folder_output(folder: str | Path, inputs: Inputs, overwrite: bool) -> None:
    """``convert --out``: a folder (or nothing yet); a model there is replaced only with
    ``--overwrite``, and no input may be a file the conversion writes or removes."""
    folder = Path(folder)
    if os.path.lexists(folder) and not folder.is_dir():
        raise ValueError(f"--out {folder} is not a folder")
    _check_parent(folder, "--out")
    if not folder.is_dir():
        return
    model_files = [p for p in folder.iterdir() if MODEL_FILE_NAME.match(p.name)]
    for source in _existing(inputs):
        if (MODEL_FILE_NAME.match(source.name) and _same_file(source.parent, folder)) or any(
                _same_file(source, p) for p in model_files):
            raise ValueError(f"--out {folder} would overwrite the input {source}")
    if model_files and not overwrite:
        raise ValueError(f"--out {folder} already holds a model; pass --overwrite to replace it")
