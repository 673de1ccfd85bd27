"""Turn a callback-reporting engine call into a generator that Gradio can stream.

The engine reports each decoded scale through a callback (``on_scale`` / ``on_preview``), while a
Gradio handler must ``yield``. :func:`stream_work` runs the call in a worker thread, passes it a
``report`` function, and yields what it reports, then the return value. When the consumer stops
early (the Stop button cancels the event and the generator is closed), the next ``report`` raises
:class:`RunCancelledError` inside the worker, which ends the engine call at its next scale;
the generator waits for the worker before returning, so model work never overlaps the next run.

**Model work runs in short-lived threads only** (:func:`stream_work`'s worker, and
:func:`in_fresh_thread` for loading and calibrating at start). With torch's OpenMP pools, every
thread that has run a parallel CPU operation keeps a pool of its own; once the process holds
more pool threads than cores, OpenMP stops spinning between parallel regions and every small
operation waits for a wake-up. Measured on 2 cores with the bundled model: one default inpaint
took 0.93–0.97 s when only one thread ever ran torch work, 1.33 s in a fresh thread after the
main thread had run torch work (a 98 k-element add: 8x slower). A thread's pool goes away when
the thread ends, so the long-lived threads (the main thread, Gradio's handler threads) must not
run parallel torch operations.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["RunCancelledError", "Finished", "Reported", "in_fresh_thread", "stream_work"]

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

#: How long a closed stream waits for its worker to notice the cancellation.
_JOIN_SECONDS = 30.0


def in_fresh_thread(fn: Callable[[], Result]) -> Result:
    """``fn()`` run in a new thread that ends with it (its torch thread pool goes with it; see
    the module docstring); its exception is re-raised here."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = err

    worker = threading.Thread(target=target, name="hmar-studio-model", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class RunCancelledError(Exception):
    """Raised inside the worker when the consumer went away (Stop button)."""


class StopSignal:
    """A per-user "stop" flag kept in ``gr.State`` and set by the Stop button.

    Gradio closes a cancelled generator only after its next yield; this flag lets the worker
    stop at the very next scale instead. ``gr.State`` deep-copies its initial value for every
    user, which gives each user a fresh, unset flag.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def __deepcopy__(self, memo: dict[int, object]) -> StopSignal:
        return type(self)()

    def __repr__(self) -> str:
        return f"StopSignal(set={self.is_set()})"

    def set(self) -> None:
        """Ask the running work to stop."""
        self._event.set()

    def clear(self) -> None:
        """Forget an earlier stop request (a new run starts)."""
        self._event.clear()

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()


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
    stop: StopSignal | None = None,
) -> Iterator[Reported[Item] | Finished[Result]]:
    """Run ``work(report)`` in a thread and yield its reports, then its result.

    Args:
        work: called once with ``report``; whatever it passes to ``report`` is yielded as
            :class:`Reported`, and its return value as :class:`Finished`.
        stop: the user's Stop flag; once set, the next ``report`` ends the work and the
            stream ends without a :class:`Finished`.

    Raises:
        Whatever ``work`` raised (re-raised in the consumer's thread).
    """
    events: queue.Queue[tuple[str, object]] = queue.Queue()
    cancel = threading.Event()

    def report(item: Item) -> None:
        if cancel.is_set() or (stop is not None and stop.is_set()):
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
