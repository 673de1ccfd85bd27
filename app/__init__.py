"""HMAR Studio's Gradio app: a thin, importable shell around an injected :class:`Pipeline`.

``build_demo(pipeline)`` returns the ``gr.Blocks``; only ``launch.py`` loads the model and calls
``launch()``. The handlers are plain functions, tested directly.
"""

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
