"""Turn a callback-reporting engine call into a generator that Gradio can stream.

The engine reports each decoded scale through a callback (``on_scale`` / ``on_preview``), while a
Gradio handler must ``yield``. :func:`stream_work` runs the call in a worker thread, passes it a
``report`` function, and yields what it reports, then the return value. When the consumer stops
early (the Stop button cancels the event and the generator is closed), the next ``report`` raises
:class:`RunCancelledError` inside the worker, which ends the engine call at its next scale;
the generator waits for the worker before returning, so model work never overlaps the next run.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["RunCancelledError", "Finished", "Reported", "stream_work"]

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

#: How long a closed stream waits for its worker to notice the cancellation.
_JOIN_SECONDS = 30.0


class RunCancelledError(Exception):
    """Raised inside the worker when the consumer went away (Stop button)."""


@dataclass(frozen=True)
class Reported(Generic[Item]):
    """Something the worker reported (e.g. a preview of one scale)."""

    item: Item


@dataclass(frozen=True)
class Finished(Generic[Result]):
    """The worker's return value; always the last thing a stream yields."""

    value: Result


def stream_work(
    work: Callable[[Callable[[Item], None]], Result],
) -> Iterator[Reported[Item] | Finished[Result]]:
    """Run ``work(report)`` in a thread and yield its reports, then its result.

    Args:
        work: called once with ``report``; whatever it passes to ``report`` is yielded as
            :class:`Reported`, and its return value as :class:`Finished`.

    Raises:
        Whatever ``work`` raised (re-raised in the consumer's thread).
    """
    events: queue.Queue[tuple[str, object]] = queue.Queue()
    cancel = threading.Event()

    def report(item: Item) -> None:
        if cancel.is_set():
            raise RunCancelledError("the run was stopped")
        events.put(("item", item))

    def target() -> None:
        try:
            events.put(("done", work(report)))
        except RunCancelledError:
            logger.info("run stopped by the user")
            events.put(("cancelled", None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer thread
            events.put(("error", err))

    worker = threading.Thread(target=target, name="hmar-studio-run", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = events.get()
            if kind == "item":
                yield Reported(value)  # type: ignore[arg-type]
            elif kind == "done":
                yield Finished(value)  # type: ignore[arg-type]
                return
            elif kind == "error":
                raise value  # type: ignore[misc]
            else:
                return
    finally:
        cancel.set()
        worker.join(_JOIN_SECONDS)
        if worker.is_alive():
            logger.warning("a stopped run is still finishing its current scale")
