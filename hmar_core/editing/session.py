"""Running an :class:`~hmar_core.editing.EditSpec` through the sampler, with an optional cache.

:func:`run_spec` is the one place where an edit meets the engine's ``sample_tokens``: it owns the
generator (seeded once, optionally re-seeded before ``fine_from``), times every scale and
talks to an :class:`EditSession`.

An :class:`EditSession` remembers, for the last run, every scale's
:class:`~hmar_core.sampler.ScaleState` together with the generator state right after that
scale, under a chained key: ``key[-1]`` hashes the model, labels, sampler settings, seed and
batch size; ``key[s] = hash(key[s-1], source tokens of s, keep mask of s, schedule entry of
s, the fine seed if it applies from s)``. Since the sampler's work up to scale s depends on
nothing else, a run whose keys agree up to ``s`` resumes after ``s`` and is bit-identical to
running from scratch. The source image enters through its tokens, so even a retouched image
reuses the coarse scales whose tokens did not change; encodings are cached by image hash too.

One session per user (``gr.State``); it is not thread-safe. Call :meth:`EditSession.clear`
after changing the model's weights in place. VAR models (KV cache) never resume: the cache
does not hold their keys and values.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..config import SamplerConfig
from ..sampler import SampleOutput, ScaleState
from ..schedules import Schedule
from .host import to_host
from .spec import EditSpec

if TYPE_CHECKING:
    from ..engine import EditModel

__all__ = ["EditSession", "SpecRun", "run_spec"]

logger = logging.getLogger(__name__)

ScaleCallback = Callable[[ScaleState, bool], None]


def _digest(*parts: object) -> str:
    """SHA-256 over tensors (dtype, shape, bytes) and the ``repr`` of anything else."""
    hasher = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            data = part.detach().contiguous().cpu()
            hasher.update(f"{data.dtype}{tuple(data.shape)}".encode())
            hasher.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        else:
            hasher.update(repr(part).encode())
        hasher.update(b"|")
    return hasher.hexdigest()


@dataclass
class _Entry:
    key: str
    state: ScaleState
    generator_state: torch.Tensor


class EditSession:
    """Cache of the last edit's per-scale states and of recent source encodings.

    Args:
        max_encodings: how many source encodings to keep (least recently used are dropped).

    Attributes:
        hits: scales restored from the cache over the session's life (for logs and tests).
    """

    def __init__(self, max_encodings: int = 4) -> None:
        self.max_encodings = max_encodings
        self.hits = 0
        self._entries: list[_Entry] = []
        self._encodings: OrderedDict[str, list[torch.Tensor]] = OrderedDict()

    def __repr__(self) -> str:
        return (f"EditSession(scales={len(self._entries)}, encodings={len(self._encodings)}, "
                f"hits={self.hits})")

    def clear(self) -> None:
        """Forget everything (e.g. after the weights changed)."""
        self._entries.clear()
        self._encodings.clear()

    def encode(self, pipe: EditModel, images: torch.Tensor) -> list[torch.Tensor]:
        """``pipe.backend.encode(images)``, cached by the images' hash."""
        key = _digest(pipe.model_key(), images)
        if key in self._encodings:
            self._encodings.move_to_end(key)
            return list(self._encodings[key])
        with torch.no_grad():
            tokens = pipe.backend.encode(images)
        self._encodings[key] = list(tokens)
        while len(self._encodings) > self.max_encodings:
            self._encodings.popitem(last=False)
        return tokens

    def cached_prefix(self, keys: list[str]) -> int:
        """Index of the last scale whose key matches the cached run (-1: none)."""
        last = -1
        for si, key in enumerate(keys):
            if si >= len(self._entries) or self._entries[si].key != key:
                break
            last = si
        return last

    def entry(self, scale: int) -> tuple[ScaleState, torch.Tensor]:
        found = self._entries[scale]
        return found.state, found.generator_state

    def _truncate(self, count: int) -> None:
        del self._entries[count:]

    def _store(self, key: str, state: ScaleState, generator_state: torch.Tensor) -> None:
        if len(self._entries) != state.scale:
            raise RuntimeError("edit session entries out of order")
        self._entries.append(_Entry(key, state, generator_state))


def scale_keys(
    pipe: EditModel,
    spec: EditSpec,
    settings: SamplerConfig,
    schedule: Schedule,
    seed: int,
    fine: tuple[int, int] | None,
) -> list[str]:
    """The chained per-scale cache keys of a run (see the module docstring)."""
    sampler = {k: v for k, v in settings.to_dict().items() if k not in ("mask_schedule", "steps")}
    scales = spec.num_scales
    host = to_host([spec.labels, *spec.source_tokens, *spec.keep_masks()])  # one sync
    key = _digest(pipe.model_key(), host[0], sorted(sampler.items()), seed)
    keys = []
    for si in range(scales):
        fine_here = fine[1] if fine is not None and fine[0] == si else None
        key = _digest(key, host[1 + si], host[1 + scales + si], schedule[si], fine_here)
        keys.append(key)
    return keys


@dataclass
class SpecRun:
    """Result of :func:`run_spec`.

    Attributes:
        output: the sampler's output (tokens, f_hat, confidences, labels).
        seconds: per scale, wall time of the sampler's work (0.0 for restored scales).
        resumed_from: last scale restored from the session (-1: computed from scratch).
    """

    output: SampleOutput
    seconds: list[float]
    resumed_from: int


def run_spec(
    pipe: EditModel,
    spec: EditSpec,
    settings: SamplerConfig,
    schedule: Schedule,
    seed: int,
    *,
    fine: tuple[int, int] | None = None,
    session: EditSession | None = None,
    on_scale: ScaleCallback | None = None,
) -> SpecRun:
    """Sample under ``spec``, resuming from ``session`` where the settings allow.

    Args:
        pipe: the pipeline (network, tokenizer, device).
        spec: the edit constraint.
        settings, schedule: sampler settings and the (edit) mask schedule.
        seed: seed of the run's generator.
        fine: ``(fine_from, fine_seed)``: re-seed the generator before scale ``fine_from``.
        session: cache to resume from and to fill.
        on_scale: ``on_scale(state, restored)`` after every scale, restored ones included.
    """
    num_scales = len(pipe.patch_nums)
    if fine is not None and not 0 <= fine[0] < num_scales:
        raise ValueError(f"fine_from must be in [0, {num_scales}), got {fine[0]}")
    generator = torch.Generator(device=pipe.device)
    generator.manual_seed(seed)
    stateful = pipe.backend.stateful
    keys = scale_keys(pipe, spec, settings, schedule, seed, fine) if session else []
    resumed_from, resume = -1, None
    if session is not None and not stateful:
        resumed_from = session.cached_prefix(keys)
        session._truncate(resumed_from + 1)
        session.hits += resumed_from + 1
        if resumed_from >= 0:
            resume, generator_state = session.entry(resumed_from)
            generator.set_state(generator_state)
            logger.info("edit: resuming after scale %d from the session cache", resumed_from)
            for si in range(resumed_from + 1):
                if on_scale is not None:
                    on_scale(session.entry(si)[0], True)
    elif session is not None:
        session._truncate(0)
    if fine is not None and fine[0] == resumed_from + 1:
        generator.manual_seed(fine[1])
    seconds = [0.0] * num_scales
    clock = [time.perf_counter()]

    def hook(state: ScaleState) -> None:
        seconds[state.scale] = time.perf_counter() - clock[0]
        if session is not None and not stateful:
            session._store(keys[state.scale], state, generator.get_state())
        if fine is not None and fine[0] == state.scale + 1:
            generator.manual_seed(fine[1])
        if on_scale is not None:
            on_scale(state, False)
        clock[0] = time.perf_counter()

    if resume is not None and resume.scale == num_scales - 1:  # nothing left to sample
        confidences = [torch.ones_like(t, dtype=resume.f_hat.dtype) for t in resume.tokens]
        confidences[-1] = resume.confidence
        output = SampleOutput(list(resume.tokens), resume.f_hat, confidences, spec.labels)
    else:
        output = pipe.backend.sample_tokens(spec.labels, settings, schedule, generator,
                                    constraint=spec, on_scale=hook, resume=resume)
    return SpecRun(output, seconds, resumed_from)
