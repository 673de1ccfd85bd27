"""The one training skeleton of both trainers: resume, loop, evaluation, checkpoints, export.

A trainer (:mod:`train.tokenizer`, :mod:`train.hmar`) builds its networks, data and losses and
hands them over as a :class:`TrainerParts`; :func:`run_training` does everything else, the same
way for both:

1. the output folder (:mod:`train.run_folder`: refused when it holds an earlier run, unless
   resuming or overwriting), the checkpoint manager, the seed of this process;
2. resume from the newest readable checkpoint (:mod:`train.state`), then the trainer's data;
3. the held-out evaluation at step 0 of a new run;
4. the loop: one optimiser step (:meth:`TrainerParts.train_step`), the running loss, log
   scalars every ``log_interval`` steps, the trainer's per-step upkeep, the time budget, and at
   their intervals evaluations, previews and checkpoints;
5. the final evaluation, checkpoint, preview and export.

Every call that is collective (all ranks must make it) is made by every rank in the same order.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointManager, WriteHook
from .config import RunConfig
from .distributed import DistContext
from .logging import Reporter
from .loop import TimeBudget, configure_backends, resolve_precision, seed_process
from .run_folder import check_out_dir, clear_previous_run
from .state import RunState, restore_run_state, run_state

__all__ = [
    "History",
    "RunOutcome",
    "StepOutput",
    "TrainerParts",
    "prepare_run",
    "run_training",
    "train_with",
]

logger = logging.getLogger(__name__)

History = dict[str, list[tuple[int, float]]]


@dataclass
class StepOutput:
    """What one optimiser step reports.

    Attributes:
        loss: the step's loss (0-d tensor, detached, not synchronised).
        lr: the learning rate used.
        grad_norm: gradient norm before clipping (0-d tensor).
        stats: more detached 0-d tensors, logged as ``train/<name>``.
    """

    loss: torch.Tensor
    lr: float
    grad_norm: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class RunOutcome:
    """What :func:`run_training` did.

    Attributes:
        step: steps completed.
        export_dir: the export folder (``None`` on ranks > 0).
        history: ``"losses"`` and the trainer's evaluation metric: lists of (step, value).
    """

    step: int
    export_dir: Path | None
    history: History


class TrainerParts(abc.ABC):
    """What a trainer plugs into :func:`run_training`.

    Attributes:
        kind: the checkpoint kind (``"tokenizer"`` or ``"hmar"``).
        metric: history key of the held-out evaluation (``"val_psnr"`` is logged as
            ``val/psnr``).
        export_name: the export folder inside ``out_dir``.
        evaluation_previews: :meth:`evaluate` also writes a preview (rank 0), so the skeleton
            does not add one at the same step.
        state: everything the checkpoints save.
    """

    kind: str
    metric: str
    export_name: str
    evaluation_previews: bool = False
    state: RunState

    @abc.abstractmethod
    def config_record(self) -> dict[str, Any]:
        """The config saved with checkpoints (every key but ``train`` must match on resume)."""

    @abc.abstractmethod
    def start(self, step: int) -> None:
        """Open the data streams from ``step`` (after a resume); collective."""

    @abc.abstractmethod
    def train_step(self, step: int, total: int) -> StepOutput:
        """One optimiser step at global step ``step`` of a ``total``-step schedule."""

    def log_values(self) -> dict[str, float]:
        """More scalars at a log step (collective)."""
        return {}

    def after_step(self, step: int) -> None:
        """Upkeep after step ``step`` finished and was logged (EMA, code restarts, ...)."""
        return None

    def checkpoint_extras(self, step: int) -> dict[str, Any]:
        """More entries of the checkpoint of ``step`` (collective; used on rank 0)."""
        return {}

    def restore_extras(self, ckpt: dict[str, Any]) -> None:
        """Load what :meth:`checkpoint_extras` saved."""
        return None

    @abc.abstractmethod
    def evaluate(self, step: int, reporter: Reporter) -> float | None:
        """The held-out metric at ``step`` (the same on every rank; collective), or ``None``."""

    def preview(self, step: int, reporter: Reporter) -> None:
        """Write a preview image grid (rank 0 only)."""
        return None

    @abc.abstractmethod
    def export(self, folder: Path, history: History) -> Path:
        """Write the final export into ``folder`` (rank 0 only)."""


def prepare_run(run: RunConfig, ctx: DistContext) -> tuple[RunConfig, TimeBudget]:
    """Start a run: the time budget, backend flags, the precision this device can run, and
    the output-folder check (before anything is loaded or written).

    Returns:
        ``(run with the resolved precision, the budget)``.
    """
    budget = TimeBudget(run.max_minutes)  # the budget covers data, caches and the export
    configure_backends(ctx)
    check_out_dir(run, ctx)
    run = dataclasses.replace(run, precision=resolve_precision(run.precision, ctx.device))
    ctx.local_slice(run.batch_size)  # raises early when the batch does not split evenly
    return run, budget


def _resume(parts: TrainerParts, run: RunConfig, ctx: DistContext,
            manager: CheckpointManager) -> tuple[int, int, History]:
    """``(first step, schedule length, history)``: from the newest readable checkpoint when
    resuming, else a fresh start."""
    history: History = {"losses": [], parts.metric: []}
    if not run.resume:
        return 0, run.steps, history
    loaded = manager.load_latest(ctx.device, set_aside_unreadable=ctx.is_main)
    if loaded is None:
        logger.info("no checkpoint in %s: starting from step 0", manager.folder)
        return 0, run.steps, history
    ckpt, path = loaded
    start, total, saved = restore_run_state(ckpt, parts.state, ctx, parts.kind,
                                            parts.config_record(), run.steps)
    parts.restore_extras(ckpt)
    for key in history:
        history[key] = [tuple(x) for x in saved.get(key, [])]
    logger.info("resumed from %s at step %d", path, start)
    return start, total, history


class _Run:
    """The state of the loop of :func:`run_training` (one object, so each part stays short)."""

    def __init__(self, parts: TrainerParts, run: RunConfig, ctx: DistContext,
                 manager: CheckpointManager, reporter: Reporter, total: int,
                 history: History) -> None:
        self.parts, self.run, self.ctx, self.manager = parts, run, ctx, manager
        self.reporter, self.total, self.history = reporter, total, history

    def evaluate(self, step: int) -> None:
        value = self.parts.evaluate(step, self.reporter)
        if value is not None:
            self.history[self.parts.metric].append((step, value))
            self.reporter.scalars(step, {self.parts.metric.replace("_", "/", 1): value})

    def save(self, step: int) -> None:
        extras = self.parts.checkpoint_extras(step)
        ckpt = run_state(self.parts.state, self.ctx, self.parts.kind, step, self.total,
                         self.parts.config_record(), self.history)
        if self.ctx.is_main:
            ckpt.update(extras)
            self.manager.save(ckpt, step)
        self.ctx.barrier()

    def log(self, step: int, output: StepOutput, running: torch.Tensor) -> None:
        mean_loss = float(self.ctx.all_reduce_mean(running[0] / running[1]))
        running.zero_()
        self.history["losses"].append((step, mean_loss))
        values = {"train/loss": mean_loss, "train/lr": output.lr,
                  "train/grad_norm": float(output.grad_norm),
                  **{f"train/{k}": float(v) for k, v in output.stats.items()},
                  **self.parts.log_values()}
        self.reporter.scalars(step, values)

    def at_intervals(self, step: int) -> None:
        """Evaluation, preview and checkpoint when their intervals fall on ``step``."""
        run, last = self.run, step == self.total
        evaluated = bool(run.val_interval and step % run.val_interval == 0 and not last)
        if evaluated:
            self.evaluate(step)
        if (run.sample_interval and step % run.sample_interval == 0 and not last
                and self.ctx.is_main and not (evaluated and self.parts.evaluation_previews)):
            self.parts.preview(step, self.reporter)
        if run.ckpt_interval and step % run.ckpt_interval == 0 and not last:
            self.save(step)

    def loop(self, start: int, budget: TimeBudget) -> int:
        """Train from ``start`` until the schedule ends or the time is up; the last step."""
        run, ctx, device = self.run, self.ctx, self.ctx.device
        step, done, running = start, 0, torch.zeros(2, device=device)
        while step < self.total and not budget.expired(ctx):
            output = self.parts.train_step(step, self.total)
            running += torch.stack([output.loss.float(), torch.ones((), device=device)])
            step, done = step + 1, done + 1
            if step % run.log_interval == 0 or step == self.total:
                self.log(step, output, running)
            self.parts.after_step(step)
            self.reporter.step(run.batch_size)
            new_total = budget.calibrate(done, step, self.total, ctx)
            if new_total is not None:
                self.total = new_total
                self.reporter.set_total(new_total)
            self.at_intervals(step)
        return step


def run_training(parts: TrainerParts, run: RunConfig, ctx: DistContext, budget: TimeBudget,
                 write_hook: WriteHook | None = None) -> RunOutcome:
    """Resume or start, train, evaluate, checkpoint and export (see the module docstring).

    Args:
        parts: the trainer's networks, data and losses.
        run: the run configuration (precision resolved by :func:`prepare_run`).
        ctx: the process context.
        budget: the wall-clock budget of :func:`prepare_run`.
        write_hook: called while checkpoints are written (tests kill runs there).

    Raises:
        hmar_core.CheckpointError: resuming, but no checkpoint can be read.
        ValueError: resuming a checkpoint of another kind of run or architecture.
    """
    out = Path(run.out_dir)
    if run.overwrite and ctx.is_main:
        clear_previous_run(out, parts.export_name)
    ctx.barrier()
    out.mkdir(parents=True, exist_ok=True)
    manager = CheckpointManager(out / "checkpoints", write_hook=write_hook)
    seed_process(ctx, run.seed)
    start, total, history = _resume(parts, run, ctx, manager)
    if ctx.is_main:
        manager.remove_stale_temporaries()
    parts.start(start)
    reporter = Reporter(ctx, out, total, start, tensorboard=run.tensorboard,
                        progress_bar=run.progress_bar)
    loop = _Run(parts, run, ctx, manager, reporter, total, history)
    if start == 0:
        loop.evaluate(0)
    parts.state.model.train()
    step = loop.loop(start, budget)
    reporter.finish_bar()
    if step < loop.total:
        logger.info("time budget used up at step %d of %d", step, loop.total)
    loop.evaluate(step)
    loop.save(step)
    export_dir = None
    if ctx.is_main:
        if not parts.evaluation_previews:
            parts.preview(step, reporter)
        export_dir = parts.export(out / parts.export_name, history)
    ctx.barrier()
    reporter.close()
    return RunOutcome(step, export_dir, history)


def train_with(run: RunConfig, ctx: DistContext | None,
               build: Callable[[RunConfig, DistContext], TrainerParts],
               write_hook: WriteHook | None = None) -> RunOutcome:
    """A trainer's ``main``: the process context, :func:`prepare_run`, the trainer's parts
    (``build(run, ctx)``, which checks data and configuration before anything is written),
    then :func:`run_training`.

    Args:
        run: the run configuration.
        ctx: the process context (``None``: from the ``torchrun`` environment, closed at the
            end).
        build: makes the trainer's parts from the prepared run.
        write_hook: called while checkpoints are written.
    """
    own_ctx = ctx is None
    ctx = DistContext.from_env(run.device) if ctx is None else ctx
    try:
        run, budget = prepare_run(run, ctx)
        return run_training(build(run, ctx), run, ctx, budget, write_hook)
    finally:
        if own_ctx:
            ctx.close()
