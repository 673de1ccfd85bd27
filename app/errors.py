"""Turn any exception from a run into a short message a user can act on (never a traceback).

:func:`friendly_message` is pure and tested; the UI wraps its result in ``gr.Error`` and logs the
full exception on the server.
"""

from __future__ import annotations

import logging

__all__ = ["InputError", "friendly_message"]

logger = logging.getLogger(__name__)

_MAX_DETAIL = 300


class InputError(ValueError):
    """Bad user input detected by the app itself; its message is shown as is."""


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 1] + "…"


def _is_out_of_memory(exc: BaseException) -> bool:
    if type(exc).__name__ in {"OutOfMemoryError", "MemoryError"}:
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def friendly_message(exc: BaseException) -> str:
    """A one-line message for the user.

    Args:
        exc: whatever a handler caught.

    Returns:
        ``InputError`` messages verbatim; engine ``ValueError``s as "Invalid input: ...";
        unreadable images, out-of-memory and checkpoint problems with a hint; anything else as a
        generic message that names only the exception type (details go to the server log).
    """
    if isinstance(exc, InputError):
        return _first_line(str(exc)) or "Invalid input."
    if _is_out_of_memory(exc):
        return ("Out of memory: try fewer variants, a lower quality setting or a smaller "
                "image.")
    name = type(exc).__name__
    if name == "UnidentifiedImageError" or isinstance(exc, OSError) and "image" in str(exc):
        return "Could not read the image: upload a PNG, JPEG or WebP picture."
    if name == "CheckpointError":
        return f"Model problem: {_first_line(str(exc))}"
    if isinstance(exc, ValueError):
        detail = _first_line(str(exc))
        return f"Invalid input: {detail}" if detail else "Invalid input."
    if isinstance(exc, NotImplementedError):
        detail = _first_line(str(exc))
        return f"Not supported: {detail}" if detail else "This is not supported yet."
    return f"Something went wrong ({name}). The details are in the server log."
