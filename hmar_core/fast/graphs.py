"""Static-shape CUDA graphs: capture a function once per key, then replay it.

A :class:`GraphCache` runs ``fn(*inputs)`` eagerly where graphs are off (CPU, or
``enabled=False``). On CUDA, the first call of a key copies the inputs into static buffers,
warms the function up on a side stream (cuBLAS handles, SDPA kernel choice), captures it into a
``torch.cuda.CUDAGraph`` and keeps its output; later calls copy the new inputs into the same
buffers and replay.

Contract for ``fn``: a pure function of its tensor arguments and of tensors whose storage never
moves (weights, buffers written with ``copy_``); no host synchronisation, no random draws, no
shape-dependent Python control flow beyond the key. It returns a tensor or a tuple of tensors
(``None`` allowed). All graphs of a cache share one memory pool; a graph's outputs stay alive
with it, so they are valid until the next replay of the *same* graph (clone what must outlive
that).

Graphs nest: while the cache warms up or captures ``fn``, a ``run`` that ``fn`` itself makes
(the runner's per-scale graph inside the sampler's per-step graph) runs eagerly, so it becomes
part of the enclosing graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["GraphCache"]

logger = logging.getLogger(__name__)

Inputs = Sequence[torch.Tensor | None]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor | None]
    output: Any  # a tensor or a tuple of tensors (None allowed)


class GraphCache:
    """One CUDA graph per key with static input buffers (eager fallback off CUDA).

    Args:
        enabled: capture graphs for CUDA inputs; ``False`` always runs eagerly.
        warmup: eager runs on a side stream before each capture.
    """

    def __init__(self, enabled: bool = True, warmup: int = 2) -> None:
        self.enabled = enabled
        self.warmup = warmup
        self._graphs: dict[Hashable, _Captured] = {}
        self._pool: object | None = None
        self.error: str | None = None  # why capture was abandoned, if it was
        self._stream: torch.cuda.Stream | None = None
        self._inside = False  # warming up or capturing: nested runs are part of that graph

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every captured graph (and, with them, the shared pool's memory)."""
        self._graphs.clear()
        self._pool = None

    def run(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        inputs: Inputs,
        device: torch.device,
    ) -> Any:
        """``fn(*inputs)``, replayed from a graph captured for ``key`` where possible.

        Args:
            key: everything that decides shapes and the code path of ``fn``.
            fn: the function (see the module contract).
            inputs: its tensor arguments (``None`` allowed); shapes must be fixed per key.
            device: where the work runs; graphs only for CUDA devices.

        Returns:
            The output; from a graph, its static output tensor(s) (see the module docs).
        """
        if not self.enabled or device.type != "cuda" or self._inside:
            return fn(*inputs)
        captured = self._graphs.get(key)
        if captured is None:
            try:
                captured = self._capture(fn, inputs, device)
            except RuntimeError as err:  # e.g. an op that cannot be captured on this build
                logger.warning("CUDA graph capture failed (%s); running eagerly from now on",
                               err)
                self.enabled, self.error = False, str(err)
                torch.cuda.synchronize(device)
                return fn(*inputs)
            self._graphs[key] = captured
        else:
            for buffer, value in zip(captured.inputs, inputs):
                if buffer is not None and value is not None:
                    buffer.copy_(value)
        captured.graph.replay()
        return captured.output

    def _capture(self, fn: Callable[..., Any], inputs: Inputs, device: torch.device
                 ) -> _Captured:
        self._inside = True
        try:
            return self._capture_inside(fn, inputs, device)
        finally:
            self._inside = False

    def _capture_inside(self, fn: Callable[..., Any], inputs: Inputs, device: torch.device
                        ) -> _Captured:
        static = [None if x is None else x.clone() for x in inputs]
        if self._stream is None:  # warm-up and capture share one side stream (cuBLAS state)
            self._stream = torch.cuda.Stream(device=device)
        side = self._stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=side):
            output = fn(*static)
        logger.debug("captured graph %d", len(self._graphs) + 1)
        return _Captured(graph, static, output)

