"""Pieces every training loop shares: precision, seeding, the optimiser step, DDP wrapping
and the wall-clock budget.

Backend flags (TF32) are set here by :func:`configure_backends`, which the trainers call at the
start of ``main``; nothing is set at import.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .config import Precision
from .distributed import DistContext
from .randomness import rank_seed

__all__ = [
    "TimeBudget",
    "autocast",
    "configure_backends",
    "resolve_precision",
    "make_scaler",
    "optimizer_step",
    "seed_process",
    "to_device_async",
    "wrap_ddp",
]

logger = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def configure_backends(ctx: DistContext) -> None:
    """TF32 matmuls/convolutions on CUDA (the official recipe trains with TF32 on)."""
    if ctx.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_precision(precision: Precision, device: torch.device) -> Precision:
    """The precision to run: bf16 becomes fp16 + GradScaler on GPUs without bf16 (logged)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        logger.warning("this GPU has no bf16 support: training in fp16 with a GradScaler")
        return "fp16"
    return precision


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16/fp16, a null context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def make_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler enabled only for fp16 (official settings: initial scale 2^11)."""
    return torch.amp.GradScaler(device.type, init_scale=2.0**11, growth_interval=1000,
                                enabled=precision == "fp16")


def to_device_async(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor.to(device)`` without a host synchronisation for CPU → CUDA copies.

    A plain copy from pageable memory waits for every kernel queued on the stream; a pinned
    copy with ``non_blocking`` is ordered on the stream instead (same values, no stall).
    """
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.contiguous().pin_memory().to(device, non_blocking=True)


def seed_process(ctx: DistContext, seed: int) -> None:
    """Seed this rank's global torch RNG (used only by stochastic depth)."""
    torch.manual_seed(rank_seed(seed, ctx.rank))


def wrap_ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel`` around ``module`` when running distributed, else itself."""
    if not ctx.distributed:
        return module
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: Iterable[torch.Tensor],
    grad_clip: float,
) -> torch.Tensor:
    """Backward, unscale, clip, step, update the scaler.

    Returns:
        The gradient norm before clipping, a 0-d tensor (not synchronised; ``nan``/``inf``
        when fp16 overflowed and the step was skipped).
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    params = [p for p in params if p.grad is not None]
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    scaler.step(optimizer)
    scaler.update()
    return norm.detach()


class TimeBudget:
    """A wall-clock limit (``max_minutes``) for one process of a run.

    After a few warm-up steps the step time is measured and the schedule length is shortened
    so that the learning-rate decay ends when the time does (:meth:`calibrate`); the loop stops
    when :meth:`expired` (rank 0 decides, every rank follows). A reserve of 5 % (at most two
    minutes) is kept for the final evaluation, checkpoint and export.

    Args:
        max_minutes: the budget, or ``None`` for no limit.
        warmup_steps: steps excluded from the timing (compilation, autotuning, caches).
        measure_steps: steps timed for the calibration.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, max_minutes: float | None, warmup_steps: int = 5,
                 measure_steps: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.max_seconds = None if max_minutes is None else max_minutes * 60.0
        self.start = clock()
        self.warmup_steps = warmup_steps
        self.measure_steps = measure_steps
        self._mark: float | None = None
        reserve = 0.0 if self.max_seconds is None else min(0.05 * self.max_seconds, 120.0)
        self.deadline = (None if self.max_seconds is None
                         else self.start + self.max_seconds - reserve)

    @property
    def active(self) -> bool:
        return self.deadline is not None

    def expired(self, ctx: DistContext) -> bool:
        """True on every rank once rank 0's clock passed the deadline."""
        if self.deadline is None:
            return False
        return ctx.any_true(ctx.is_main and self.clock() >= self.deadline)

    def calibrate(self, steps_done: int, step: int, total: int, ctx: DistContext) -> int | None:
        """Call after every step; returns a new schedule length once it has been measured.

        Args:
            steps_done: steps finished by this process.
            step: the global step index about to run next.
            total: the current schedule length.
            ctx: the process context (rank 0's measurement is broadcast).
        """
        if self.deadline is None:
            return None
        if steps_done == self.warmup_steps:
            self._mark = self.clock()
            return None
        if steps_done != self.warmup_steps + self.measure_steps or self._mark is None:
            return None
        now = self.clock()
        per_step = (now - self._mark) / self.measure_steps
        fit = step + int(max(self.deadline - now, 0.0) / max(per_step, 1e-9))
        new_total = ctx.broadcast_object(max(min(total, fit), step + 1))
        if new_total < total:
            logger.info("time budget: %.1f ms per step, schedule shortened from %d to %d steps",
                        per_step * 1e3, total, new_total)
        return new_total
