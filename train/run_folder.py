"""The output folder of a run: refuse to reuse one by accident, clear one on request.

A run writes ``checkpoints/``, ``samples/``, ``tb/``, ``train.log`` and its export into
``run.out_dir``. Starting a new run in a folder that already holds one would mix the two: the
export is replaced, TensorBoard curves interleave, and the keep-the-newest-two rule would prune
the new run's checkpoints because the old run's step numbers are higher. So a new run needs an
empty (or missing) folder; ``run.resume`` (``--resume``) continues the run that is there and
``run.overwrite`` (``--overwrite``) deletes what the trainers wrote there before starting.
``train.log`` alone does not count as a run: the command line opens it before the run starts,
and a run that failed before writing anything leaves only its log.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .config import RunConfig
from .distributed import DistContext

__all__ = ["RUN_OUTPUTS", "check_out_dir", "clear_previous_run"]

logger = logging.getLogger(__name__)

#: What a run writes besides its log and its export (deleted by ``run.overwrite``).
RUN_OUTPUTS: tuple[str, ...] = ("checkpoints", "samples", "tb")
_LOG = "train.log"


def _earlier_run(out: Path) -> list[str]:
    """Names in ``out`` that belong to an earlier run (sorted; empty when there are none)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name != _LOG)


def check_out_dir(run: RunConfig, ctx: DistContext) -> None:
    """Refuse a folder that holds an earlier run unless ``run.resume`` or ``run.overwrite``.

    Rank 0 looks at the folder and every rank raises the same error (collective).

    Raises:
        NotADirectoryError: ``out_dir`` is a file.
        ValueError: the folder holds an earlier run and neither flag is set.
    """
    out = Path(run.out_dir)
    problem: tuple[bool, str] | None = None  # (is a file, message)
    if ctx.is_main:
        if out.exists() and not out.is_dir():
            problem = (True, f"output folder {out} is a file")
        elif not (run.resume or run.overwrite):
            found = _earlier_run(out)
            if found:
                shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
                problem = (False, f"output folder {out} already holds a run ({shown}); pass "
                                  "--resume (run.resume) to continue it, --overwrite "
                                  "(run.overwrite) to replace it, or choose another --out")
    problem = ctx.broadcast_object(problem)
    if problem is not None:
        is_file, message = problem
        raise NotADirectoryError(message) if is_file else ValueError(message)


def clear_previous_run(out: Path, export_name: str) -> None:
    """Delete the checkpoints, samples, TensorBoard events and export of an earlier run.

    Call on rank 0 only. Other files in the folder are left alone.

    Args:
        out: the run folder.
        export_name: the trainer's export folder (``tokenizer`` or ``model``).
    """
    for name in (*RUN_OUTPUTS, export_name):
        target = out / name
        if target.is_dir() and not target.is_symlink():
            logger.warning("--overwrite: deleting %s of the earlier run", target)
            shutil.rmtree(target)
