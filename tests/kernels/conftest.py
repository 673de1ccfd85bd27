"""Kernel tests: without a GPU, run the Triton kernels through Triton's CPU interpreter.

Triton reads ``TRITON_INTERPRET`` from the environment (``triton.knobs.runtime.interpret``) and
``@triton.jit`` uses it when a kernel is *decorated*, that is when ``kernels.triton_backend`` is
imported. pytest imports this file before the test modules of this folder, so the variable is
set here, before that import; a module imported earlier in the session without it is reloaded.
On a machine with CUDA nothing is changed, so the same tests run the compiled kernels.
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    _module = sys.modules.get("kernels.triton_backend")
    if _module is not None and not _module._interpreted():
        importlib.reload(_module)
