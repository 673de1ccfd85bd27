"""Opt-in Triton kernels of the fast engine: when to use one, and what happens when it fails.

Every such kernel takes ``requested``: ``None`` (auto: on CUDA, after the kernel's own one-time
check against the torch ops it replaces; any failure or disagreement is logged and the torch
ops are used), ``True`` (the kernel or an error; on a CPU only under ``TRITON_INTERPRET=1``,
for tests) or ``False`` (the torch ops).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["checked_kernel", "may_run"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def may_run(requested: bool | None, device: torch.device) -> bool:
    """Whether a kernel with this ``requested`` could run on ``device`` (auto: CUDA only), so
    that callers need not import it otherwise."""
    return requested is True or (requested is None and device.type == "cuda")


def checked_kernel(requested: bool | None, device: torch.device, what: str, fallback: str,
                   build: Callable[[], T], interpreted: Callable[[], bool]) -> T | None:
    """``build()`` (which imports, compiles and checks the kernel, raising on any problem)
    when the kernel is to run, else ``None``.

    Args:
        requested: ``None`` (auto), ``True`` or ``False`` (see the module docstring).
        device: where it would run.
        what: the kernel's name in messages.
        fallback: what runs instead, for the warning.
        build: makes and checks the kernel.
        interpreted: whether Triton runs under its CPU interpreter (called only for CPUs).
    """
    if not may_run(requested, device):
        return None
    try:
        if device.type != "cuda" and not (device.type == "cpu" and interpreted()):
            raise ValueError(f"{what}: needs a CUDA device (or a CPU under "
                             f"TRITON_INTERPRET=1), got {device}")
        return build()
    except Exception as err:  # noqa: BLE001 (auto mode falls back on any failure, logged)
        if requested:
            raise
        logger.warning("%s unavailable (%s: %s); using %s", what, type(err).__name__, err,
                       fallback)
        return None
