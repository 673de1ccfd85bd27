"""Everything a run must save to continue exactly, gathered in one place.

:func:`run_state` builds the checkpoint dictionary (model, optimizer, GradScaler, EMA, extra
stateful objects, the global RNG state of every rank, step and schedule length, history) and
:func:`restore_run_state` puts it back. Data position is the step itself: batches are a pure
function of ``(seed, step)`` (:class:`train.batches.StepBatchSampler`), as are label dropout,
masks and code restarts (:mod:`train.randomness`), so no iterator state needs saving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import capture_rng_state, restore_rng_state
from .distributed import DistContext
from .ema import EMA
from .loop import seed_process

__all__ = ["RunState", "restore_run_state", "run_state"]

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """The stateful objects of a run.

    Attributes:
        model: the trained network (unwrapped).
        optimizer: its optimiser.
        scaler: the GradScaler (disabled ones save fine).
        ema: the weight average, or ``None``.
        extra: other objects with ``state_dict``/``load_state_dict`` (discriminator, ...).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_state(state: RunState, ctx: DistContext, kind: str, step: int, total: int,
              config: dict[str, Any], history: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dictionary of ``step`` (complete on rank 0, empty elsewhere).

    Collective: every rank must call it (the RNG states of all ranks are gathered).
    """
    rng = ctx.all_gather_object(capture_rng_state(ctx.device))
    if not ctx.is_main:
        return {}
    return {
        "kind": kind,
        "step": step,
        "schedule_total": total,
        "world_size": ctx.world_size,
        "config": config,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "extra": {name: obj.state_dict() for name, obj in state.extra.items()},
        "rng": rng,
        "history": history,
    }


def restore_run_state(ckpt: dict[str, Any], state: RunState, ctx: DistContext, kind: str,
                      config: dict[str, Any], steps: int) -> tuple[int, int, dict[str, Any]]:
    """Load a checkpoint written by :func:`run_state` into ``state``.

    Args:
        ckpt: the loaded dictionary.
        state: the freshly built objects of this run.
        ctx: the process context.
        kind: ``"tokenizer"`` or ``"hmar"`` (must match the checkpoint).
        config: this run's config record; its architecture part must match the checkpoint's.
        steps: this run's configured length (a changed length replaces the saved schedule).

    Returns:
        ``(step, schedule_total, history)``.

    Raises:
        ValueError: the checkpoint belongs to another kind of run or architecture.
    """
    if ckpt.get("kind") != kind:
        raise ValueError(f"the checkpoint is a {ckpt.get('kind')!r} checkpoint, not {kind!r}")
    for key in config:
        if key != "train" and ckpt["config"].get(key) != config[key]:
            raise ValueError(
                f"cannot resume: the checkpoint's {key} config {ckpt['config'].get(key)} "
                f"differs from this run's {config[key]}; use a new out_dir or the same config")
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scaler.load_state_dict(ckpt["scaler"])
    if state.ema is not None:
        if ckpt["ema"] is None:
            logger.warning("the checkpoint has no EMA; starting the average from the weights")
            state.ema.reset(state.model)
        else:
            state.ema.load_state_dict(ckpt["ema"])
    for name, obj in state.extra.items():
        if name not in ckpt["extra"]:
            raise ValueError(f"the checkpoint has no {name!r} state")
        obj.load_state_dict(ckpt["extra"][name])
    step = int(ckpt["step"])
    if int(ckpt.get("world_size", 1)) == ctx.world_size:
        restore_rng_state(ckpt["rng"][ctx.rank], ctx.device)
    else:
        logger.warning("resuming on %d processes a run saved on %d: stochastic depth draws "
                       "restart from a new seed (everything else continues exactly)",
                       ctx.world_size, ckpt.get("world_size"))
        seed_process(ctx, int(config["train"]["run"]["seed"]) + step)
    saved_steps = int(ckpt["config"]["train"]["run"]["steps"])
    total = int(ckpt["schedule_total"]) if saved_steps == steps else steps
    if total != int(ckpt["schedule_total"]):
        logger.info("run length changed to %d steps (was %d)", total, ckpt["schedule_total"])
    return step, total, dict(ckpt.get("history") or {})
