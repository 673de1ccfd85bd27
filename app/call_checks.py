"""Refuse malformed event calls before Gradio runs them, with one log line instead of a traceback.

Every event of the app can be called by ``fn_index`` (``POST /gradio_api/queue/join``; the
browser does exactly that, so "private" events stay reachable) and the public ones by name
(``POST /gradio_api/call/<name>``). Gradio turns a wrong call (an unknown index, too few
values, a text where a slider wants a number, a choice that a dropdown does not offer, a
gallery ``select`` without its event data)
into an exception that it prints with a full traceback; ``remember_selection`` answered
"'NoneType' object is not subscriptable" (issue 17, item 5). :func:`check_call` says what is
wrong with such a call so that :class:`app.request_limits.RequestLimits` answers it with a
4xx and one log line, and the handler never runs.
"""

from __future__ import annotations

import json
import math
import typing
from typing import Any

import gradio as gr

__all__ = ["CallRefusedError", "check_call", "is_call_path"]


class CallRefusedError(ValueError):
    """A call that is refused; ``status`` is the HTTP status of the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_call_path(path: str) -> bool:
    """Whether a request path runs an event (``/queue/join`` or ``/call/<name>``; the
    ``/call/v2/`` form has its own body and is left to Gradio)."""
    path = path.rstrip("/")
    return path.endswith("/queue/join") or ("/call/" in path and "/call/v2/" not in path)


def _function(blocks: gr.Blocks, path: str, payload: dict[str, Any]) -> Any:
    fns = list(blocks.fns.values())
    if path.rstrip("/").endswith("/queue/join"):
        index = payload.get("fn_index")
        if type(index) is not int:
            raise CallRefusedError(422, "fn_index must be an integer")
        found = [fn for fn in fns if fn._id == index]
    else:
        name = path.rstrip("/").rsplit("/call/", 1)[-1]
        found = [fn for fn in fns if fn.api_name == name and fn.api_visibility != "private"]
    if not found:
        raise CallRefusedError(404, "no such event")
    return found[0]


def _takes_select_data(handler: Any) -> bool:
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # noqa: BLE001 - unresolvable hints: Gradio does not inject either
        return False
    return any(isinstance(hint, type) and issubclass(hint, gr.SelectData)
               for hint in hints.values())


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)  # ints of any size are exact


def _choice_values(block: Any) -> list[Any]:
    return [choice[1] if isinstance(choice, (tuple, list)) else choice
            for choice in (block.choices or [])]


def _value_problem(value: Any, block: Any) -> str | None:
    """Why ``value`` cannot be this input component's value (``None`` if it can)."""
    if isinstance(block, gr.Slider):
        return None if _is_number(value) else "must be a finite number"
    if isinstance(block, gr.Number):
        return None if value is None or _is_number(value) else "must be a number"
    if isinstance(block, gr.Dropdown) and not block.multiselect and not block.allow_custom_value:
        return None if value in _choice_values(block) else "is not one of the choices"
    if isinstance(block, gr.CheckboxGroup):
        choices = _choice_values(block)
        if not isinstance(value, list) or any(item not in choices for item in value):
            return "must be a list of the choices"
    return None


def check_call(blocks: gr.Blocks, path: str, body: bytes) -> None:
    """Check an event call against the app's events.

    Args:
        blocks: the running app.
        path: the request path (``.../queue/join`` or ``.../call/<name>``).
        body: the JSON request body.

    Raises:
        CallRefusedError: unknown event, an event without a server function, the wrong number of
            values, a slider or number value that is not a number, a dropdown or checkbox-group
            value that is not among the choices, or a ``select`` event without its
            ``{"index", "value"}`` event data.
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise CallRefusedError(400, "the body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise CallRefusedError(422, "the body must be an object with a 'data' list")
    fn = _function(blocks, path, payload)
    if fn.fn is None:
        raise CallRefusedError(422, "this event has no server function")
    data = payload["data"]
    api_inputs = [block for block in fn.inputs if not getattr(block, "skip_api", False)]
    if "/call/" in path and len(data) == len(api_inputs) != len(fn.inputs):
        values = iter(data)  # the named API leaves out per-user state (Gradio fills it in)
        data = [None if getattr(block, "skip_api", False) else next(values)
                for block in fn.inputs]
    if len(data) != len(fn.inputs):
        raise CallRefusedError(422, f"{fn.name} takes {len(fn.inputs)} values, got {len(data)}")
    for position, (value, block) in enumerate(zip(data, fn.inputs)):
        problem = _value_problem(value, block)
        if problem is not None:
            raise CallRefusedError(422, f"value {position} of {fn.name} {problem}")
    if _takes_select_data(fn.fn):
        event = payload.get("event_data")
        if not isinstance(event, dict) or not {"index", "value"} <= event.keys():
            raise CallRefusedError(422, f"{fn.name} needs its select event data (index, value)")
