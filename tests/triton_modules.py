"""Importing a module of Triton kernels for tests: on a CPU through Triton's interpreter.

``TRITON_INTERPRET`` must be set before a kernel is decorated, so without a GPU it is set here
and a module imported earlier (by another test file) is reloaded once to take it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
import torch


def interpreted(module: ModuleType) -> bool:
    """Whether ``module``'s kernels were decorated for the CPU interpreter."""
    return bool(module.INTERPRETED)


def kernel_module(name: str) -> tuple[ModuleType, bool]:
    """The module ``name`` (the test module is skipped where Triton is missing) and whether its
    kernels can run here (a CUDA device, or the interpreter)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    module = pytest.importorskip(name)
    if not torch.cuda.is_available() and not interpreted(module):
        module = importlib.reload(module)
    return module, torch.cuda.is_available() or interpreted(module)


def require_kernels(name: str) -> ModuleType:
    """The module ``name``; the whole test module is skipped where its kernels cannot run."""
    module, runs = kernel_module(name)
    if not runs:
        pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
    return module
