"""Tokenizer training: the multi-scale residual VQ-VAE of :mod:`hmar_core.tokenizer`.

``python -m train.tokenizer --config train/configs/emoji64-tokenizer.yaml`` (or ``torchrun
--nproc_per_node N -m train.tokenizer ...``). Library entry point: :func:`main` with a
:class:`~train.config.TokenizerTrainConfig`.

Loss = ``l1·|x − x̂|₁ + l2·|x − x̂|² + β·commitment + codebook`` (+ ``disc_weight`` × hinge
generator loss of an optional patch discriminator). The quantiser forward is
:func:`train.vq.quantize_for_training` (straight-through, tokens identical to inference); dead
codes are re-seeded every ``restart_interval`` steps. Held-out PSNR is measured through the
inference path (``encode`` → ``decode``). The result is exported to ``<out_dir>/tokenizer``
(``config.json`` + ``tokenizer.safetensors``) for ``python -m train.hmar``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from hmar_core.init import init_tokenizer_
from hmar_core.tokenizer import MultiScaleVQTokenizer

from .batches import StepBatchSampler, image_batches, open_datasets
from .checkpoint import CheckpointManager, WriteHook
from .config import TokenizerTrainConfig
from .discriminator import PatchDiscriminator, discriminator_hinge_loss, generator_hinge_loss
from .distributed import DistContext
from .ema import EMA
from .export import export_tokenizer
from .logging import Reporter
from .loop import (
    TimeBudget,
    autocast,
    configure_backends,
    make_scaler,
    optimizer_step,
    resolve_precision,
    seed_process,
    wrap_ddp,
)
from .optim import apply_schedule, build_adamw
from .randomness import Purpose, derived_generator
from .state import RunState, restore_run_state, run_state
from .vq import CodebookMonitor, VQTrainOutput, quantize_for_training

__all__ = ["TokenizerObjective", "TokenizerTrainResult", "evaluate_psnr", "main"]

logger = logging.getLogger(__name__)


@dataclass
class TokenizerTrainResult:
    """What a tokenizer run did.

    Attributes:
        step: steps completed.
        export_dir: the exported tokenizer folder (``None`` on ranks > 0).
        val_psnr: (step, held-out PSNR in dB) at every evaluation, including step 0.
        losses: (step, training loss) at every log step.
    """

    step: int
    export_dir: Path | None
    val_psnr: list[tuple[int, float]] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)


class TokenizerObjective(nn.Module):
    """Tokenizer + losses as one module (what DDP wraps)."""

    def __init__(self, tokenizer: MultiScaleVQTokenizer, cfg: TokenizerTrainConfig) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.cfg = cfg

    def forward(self, images: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], VQTrainOutput]:
        """Images (B, 3, H, W) → (loss, reconstruction, detached loss terms, VQ output)."""
        tok, cfg = self.tokenizer, self.cfg
        latent = tok.encode_latent(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            vq = quantize_for_training(latent.float(), tok.quantize.codebook,
                                       tok.quantize.phis(), tok.patch_nums)
        recon = tok.decoder(tok.post_quant_conv(vq.f_hat_st)).float()
        error = recon - images
        l1, l2 = error.abs().mean(), error.square().mean()
        loss = (cfg.l1_weight * l1 + cfg.l2_weight * l2
                + cfg.commitment_beta * vq.commitment + cfg.codebook_weight * vq.codebook)
        stats = {"l1": l1.detach(), "l2": l2.detach(), "commitment": vq.commitment.detach(),
                 "codebook": vq.codebook.detach()}
        return loss, recon, stats, vq


@torch.no_grad()
def evaluate_psnr(tokenizer: MultiScaleVQTokenizer, dataset: Dataset, ctx: DistContext,
                  batch_size: int, max_samples: int) -> float:
    """Mean PSNR (dB, images in [0, 1]) of ``encode → decode`` over the first samples.

    Each rank evaluates a strided share; the result is the same on every rank.
    """
    count = min(len(dataset), max_samples)
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    indices = list(range(ctx.rank, count, ctx.world_size))
    for start in range(0, len(indices), batch_size):
        images = torch.stack([dataset[i][0] for i in indices[start:start + batch_size]])
        images = images.to(ctx.device)
        recon = tokenizer.decode(tokenizer.encode(images))
        mse = ((recon - images) / 2).square().flatten(1).mean(1).clamp_min(1e-10)  # (b,)
        total[0] += (-10 * mse.log10()).double().sum()
        total[1] += mse.shape[0]
    ctx.all_reduce_sum(total)
    return float(total[0] / total[1].clamp_min(1))


def _config_record(cfg: TokenizerTrainConfig) -> dict[str, Any]:
    return {"tokenizer": cfg.tokenizer.to_dict(), "train": dataclasses.asdict(cfg)}


def main(cfg: TokenizerTrainConfig, ctx: DistContext | None = None, *,
         checkpoint_write_hook: WriteHook | None = None) -> TokenizerTrainResult:
    """Train a tokenizer as configured; resume, checkpoint, evaluate and export.

    Args:
        cfg: the run configuration.
        ctx: the process context (default: from the ``torchrun`` environment).
        checkpoint_write_hook: called while checkpoints are written (tests kill runs there).

    Returns:
        :class:`TokenizerTrainResult`.

    Raises:
        ValueError: the data or the configuration cannot be trained (before any step).
    """
    own_ctx = ctx is None
    ctx = DistContext.from_env(cfg.run.device) if ctx is None else ctx
    try:
        return _train(cfg, ctx, checkpoint_write_hook)
    finally:
        if own_ctx:
            ctx.close()


def _train(cfg: TokenizerTrainConfig, ctx: DistContext, write_hook: WriteHook | None
           ) -> TokenizerTrainResult:
    run, device = cfg.run, ctx.device
    budget = TimeBudget(run.max_minutes)  # the budget covers data, caches and the export
    configure_backends(ctx)
    run = dataclasses.replace(run, precision=resolve_precision(run.precision, device))
    tok_cfg = cfg.tokenizer
    if run.image_size is not None and run.image_size != tok_cfg.image_size:
        raise ValueError(f"run.image_size {run.image_size} does not fit the tokenizer, whose "
                         f"image size is {tok_cfg.image_size} (downsample {tok_cfg.downsample} "
                         f"x last patch side {tok_cfg.patch_nums[-1]})")
    ctx.local_slice(run.batch_size)  # raises early when the batch does not split evenly
    if cfg.disc_weight > 0 and tok_cfg.image_size < 2**cfg.disc_layers:
        raise ValueError(f"images of {tok_cfg.image_size} px are too small for "
                         f"{cfg.disc_layers} discriminator layers")
    splits = open_datasets(run, tok_cfg.image_size)
    val_data = splits.val if splits.val is not None else splits.train
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    init_generator = derived_generator(run.seed, Purpose.INIT)
    tokenizer = init_tokenizer_(MultiScaleVQTokenizer(tok_cfg), init_generator).to(device)
    objective = TokenizerObjective(tokenizer, cfg)
    model = wrap_ddp(objective, ctx)
    if run.compile:
        model = torch.compile(model)
    optimizer = build_adamw(tokenizer, cfg.optim, run.batch_size, device,
                            extra_no_decay=("quantize.embedding",))
    peak = cfg.optim.peak_lr(run.batch_size)
    scaler = make_scaler(run.precision, device)
    disc = disc_model = disc_optimizer = disc_scaler = None
    if cfg.disc_weight > 0:
        disc = PatchDiscriminator(cfg.disc_channels, cfg.disc_layers, tok_cfg.image_channels)
        disc = disc.init_weights_(init_generator).to(device)
        disc_model = wrap_ddp(disc, ctx)
        disc_optimizer = build_adamw(disc, cfg.optim, run.batch_size, device)
        disc_scaler = make_scaler(run.precision, device)
    ema = EMA(tokenizer, run.ema_decay) if run.ema_decay else None
    monitor = CodebookMonitor(tok_cfg.vocab_size, len(tok_cfg.patch_nums), device)
    extra = {"disc": disc, "disc_optimizer": disc_optimizer, "disc_scaler": disc_scaler}
    state = RunState(model=tokenizer, optimizer=optimizer, scaler=scaler, ema=ema,
                     extra={k: v for k, v in extra.items() if v is not None})

    manager = CheckpointManager(out / "checkpoints", write_hook=write_hook)
    seed_process(ctx, run.seed)
    start, total = 0, run.steps
    result = TokenizerTrainResult(step=0, export_dir=None)
    loaded = manager.load_latest(device) if run.resume else None
    if loaded is not None:
        ckpt, path = loaded
        start, total, history = restore_run_state(ckpt, state, ctx, "tokenizer",
                                                  _config_record(cfg), run.steps)
        monitor.load_state_dict({"counts": ckpt["monitor"]["counts"] if ctx.is_main
                                 else torch.zeros_like(monitor.counts)})
        result.val_psnr = [tuple(x) for x in history.get("val_psnr", [])]
        result.losses = [tuple(x) for x in history.get("losses", [])]
        logger.info("resumed from %s at step %d", path, start)
    if ctx.is_main:
        manager.remove_stale_temporaries()

    def save(step: int) -> None:
        counts = ctx.all_reduce_sum(monitor.counts.clone())
        ckpt = run_state(state, ctx, "tokenizer", step, total, _config_record(cfg),
                         {"val_psnr": result.val_psnr, "losses": result.losses})
        if ctx.is_main:
            ckpt["monitor"] = {"counts": counts.cpu()}
            manager.save(ckpt, step)
        ctx.barrier()

    def evaluate(step: int) -> None:
        weights = _ema_weights(tokenizer, ema)
        psnr = evaluate_psnr(weights, val_data, ctx, max(run.batch_size // ctx.world_size, 1),
                             cfg.val_samples)
        result.val_psnr.append((step, psnr))
        reporter.scalars(step, {"val/psnr": psnr})
        if ctx.is_main:
            _preview(weights, val_data, reporter, step, device)

    reporter = Reporter(ctx, out, total, start, tensorboard=run.tensorboard,
                        progress_bar=run.progress_bar)
    sampler = StepBatchSampler(splits.train.targets, run.batch_size, run.seed, ctx, start,
                               run.class_balanced)
    batches = image_batches(splits.train, sampler, run.num_workers, device)
    if start == 0:
        evaluate(0)
    tokenizer.train()
    step, done, running = start, 0, torch.zeros(2, device=device)
    while step < total and not budget.expired(ctx):
        images, _ = next(batches)
        lr = apply_schedule(optimizer, step, total, cfg.optim, peak)
        with autocast(run.precision, device):
            loss, recon, stats, vq = model(images)
        use_disc = disc is not None and step >= cfg.disc_start
        if use_disc:
            with autocast(run.precision, device):
                loss = loss + cfg.disc_weight * generator_hinge_loss(disc(recon))
        grad_norm = optimizer_step(loss, optimizer, scaler, tokenizer.parameters(),
                                   cfg.optim.grad_clip)
        if use_disc:
            apply_schedule(disc_optimizer, step, total, cfg.optim, peak)
            with autocast(run.precision, device):
                logits = disc_model(torch.cat([images, recon.detach()])).float()
                real, fake = logits.chunk(2)
                disc_loss = discriminator_hinge_loss(real, fake)
            optimizer_step(disc_loss, disc_optimizer, disc_scaler, disc.parameters(),
                           cfg.optim.grad_clip)
        monitor.record(vq.tokens)
        running += torch.stack([loss.detach().float(), torch.ones((), device=device)])
        step, done = step + 1, done + 1
        if step % run.log_interval == 0 or step == total:
            mean_loss = float(ctx.all_reduce_mean(running[0] / running[1]))
            running.zero_()
            result.losses.append((step, mean_loss))
            values = {"train/loss": mean_loss, "train/lr": lr, "train/grad_norm": float(grad_norm),
                      **{f"train/{k}": float(v) for k, v in stats.items()},
                      **monitor.usage(ctx)}
            reporter.scalars(step, values)
        if cfg.restart_interval and (step - 1) % cfg.restart_interval == 0:
            restarted = monitor.restart_dead_codes(
                tokenizer.quantize.embedding.weight, optimizer, vq.residuals,
                cfg.restart_threshold, derived_generator(run.seed, Purpose.CODE_RESTART, step),
                ctx)
            if restarted:
                logger.info("step %d: re-seeded %d unused codes", step, restarted)
        if ema is not None:
            ema.update(tokenizer)
        reporter.step(run.batch_size)
        new_total = budget.calibrate(done, step, total, ctx)
        if new_total is not None:
            total = new_total
            reporter.set_total(total)
        if run.val_interval and step % run.val_interval == 0 and step != total:
            evaluate(step)
        elif run.sample_interval and step % run.sample_interval == 0 and ctx.is_main:
            _preview(_ema_weights(tokenizer, ema), val_data, reporter, step, device)
        if run.ckpt_interval and step % run.ckpt_interval == 0 and step != total:
            save(step)
    reporter.finish_bar()
    if step < total:
        logger.info("time budget used up at step %d of %d", step, total)
    evaluate(step)
    save(step)
    result.step = step
    if ctx.is_main:
        result.export_dir = export_tokenizer(_ema_weights(tokenizer, ema), out / "tokenizer")
        logger.info("exported tokenizer to %s (held-out PSNR %.2f dB)", result.export_dir,
                    result.val_psnr[-1][1])
    ctx.barrier()
    reporter.close()
    return result


def _ema_weights(tokenizer: MultiScaleVQTokenizer, ema: EMA | None) -> MultiScaleVQTokenizer:
    """The weights to evaluate/export: the EMA copy when enabled, else the live model."""
    if ema is None:
        return tokenizer
    copy = deepcopy(tokenizer)  # no module construction: the global RNG stays untouched
    ema.copy_to(copy)
    return copy.eval()


@torch.no_grad()
def _preview(tokenizer: MultiScaleVQTokenizer, dataset: Dataset, reporter: Reporter,
             step: int, device: torch.device, count: int = 8) -> None:
    """PNG grid: originals (top row) and their reconstructions (bottom row)."""
    count = min(count, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)]).to(device)
    recon = tokenizer.decode(tokenizer.encode(images))
    reporter.images(step, "reconstructions", (torch.cat([images, recon]) + 1) / 2, count)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m train.tokenizer``: parse flags/YAML, set up logging, run :func:`main`."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .cli import parse_tokenizer_args, setup_entry_logging

    cfg = parse_tokenizer_args(argv)
    ctx = DistContext.from_env(cfg.run.device)
    try:
        setup_entry_logging(ctx, cfg.run.out_dir)
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            result = main(cfg, ctx)
        if ctx.is_main and result.val_psnr:
            first, last = result.val_psnr[0][1], result.val_psnr[-1][1]
            logger.info("done: %d steps, held-out PSNR %.2f → %.2f dB", result.step, first,
                        last)
        return 0
    finally:
        ctx.close()


if __name__ == "__main__":
    raise SystemExit(cli())
