"""HMAR Studio's Gradio app: a thin, importable shell around an injected :class:`Pipeline`.

``build_demo(pipeline)`` returns the ``gr.Blocks``; only :mod:`app.launcher` (``python
launch.py``, ``hmar-studio``) loads the model and calls ``launch()``. The handlers are plain
functions, tested directly.
"""

import os

# Before Gradio is imported: no usage analytics, no phoning home (also offline-friendly).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .errors import InputError, friendly_message
from .params import SamplingParams, Timing
from .runs import RunResult, RunUpdate, calibrate
from .ui import MAX_FILE_SIZE, QUEUE_SIZE, build_demo

__all__ = [
    "MAX_FILE_SIZE",
    "QUEUE_SIZE",
    "InputError",
    "RunResult",
    "RunUpdate",
    "SamplingParams",
    "Timing",
    "build_demo",
    "calibrate",
    "friendly_message",
]
