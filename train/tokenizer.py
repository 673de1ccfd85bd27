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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from hmar_core.init import init_tokenizer_
from hmar_core.tokenizer import MultiScaleVQTokenizer

from .batches import StepBatchSampler, image_batches, open_datasets
from .checkpoint import WriteHook
from .config import RunConfig, TokenizerTrainConfig
from .discriminator import PatchDiscriminator, discriminator_hinge_loss, generator_hinge_loss
from .distributed import DistContext
from .ema import EMA, averaged
from .export import export_tokenizer
from .logging import Reporter
from .loop import autocast, make_scaler, optimizer_step, wrap_ddp
from .optim import apply_schedule, build_adamw
from .randomness import Purpose, derived_generator
from .skeleton import History, StepOutput, TrainerParts, train_with
from .state import RunState
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
        ValueError: the data or the configuration cannot be trained (before any step), or the
            output folder holds an earlier run (without ``run.resume`` / ``run.overwrite``).
        hmar_core.CheckpointError: no checkpoint of a resumed run can be read.
    """
    outcome = train_with(cfg.run, ctx, lambda run, ctx: _TokenizerParts(cfg, run, ctx),
                         checkpoint_write_hook)
    history = outcome.history
    return TokenizerTrainResult(outcome.step, outcome.export_dir, history["val_psnr"],
                                history["losses"])


def _check_sizes(cfg: TokenizerTrainConfig, run: RunConfig) -> None:
    tok_cfg = cfg.tokenizer
    if run.image_size is not None and run.image_size != tok_cfg.image_size:
        raise ValueError(f"run.image_size {run.image_size} does not fit the tokenizer, whose "
                         f"image size is {tok_cfg.image_size} (downsample {tok_cfg.downsample} "
                         f"x last patch side {tok_cfg.patch_nums[-1]})")
    if cfg.disc_weight > 0 and tok_cfg.image_size < 2**cfg.disc_layers:
        raise ValueError(f"images of {tok_cfg.image_size} px are too small for "
                         f"{cfg.disc_layers} discriminator layers")


class _TokenizerParts(TrainerParts):
    """The tokenizer, its discriminator, data and losses, for
    :func:`train.skeleton.run_training`."""

    kind, metric, export_name = "tokenizer", "val_psnr", "tokenizer"
    evaluation_previews = True  # every evaluation writes reconstructions

    def __init__(self, cfg: TokenizerTrainConfig, run: RunConfig, ctx: DistContext) -> None:
        device, tok_cfg = ctx.device, cfg.tokenizer
        self.cfg, self.run, self.ctx = cfg, run, ctx
        _check_sizes(cfg, run)
        self.splits = open_datasets(run, tok_cfg.image_size)
        self.val_data = self.splits.val if self.splits.val is not None else self.splits.train
        init_generator = derived_generator(run.seed, Purpose.INIT)
        self.tokenizer = init_tokenizer_(MultiScaleVQTokenizer(tok_cfg), init_generator).to(device)
        self.model = wrap_ddp(TokenizerObjective(self.tokenizer, cfg), ctx)
        if run.compile:
            self.model = torch.compile(self.model)
        optimizer = build_adamw(self.tokenizer, cfg.optim, run.batch_size, device,
                                extra_no_decay=("quantize.embedding",))
        self.peak = cfg.optim.peak_lr(run.batch_size)
        scaler = make_scaler(run.precision, device)
        self.disc = self.disc_model = None
        extra: dict[str, Any] = {}
        if cfg.disc_weight > 0:
            self.disc = PatchDiscriminator(cfg.disc_channels, cfg.disc_layers,
                                           tok_cfg.image_channels)
            self.disc = self.disc.init_weights_(init_generator).to(device)
            self.disc_model = wrap_ddp(self.disc, ctx)
            extra = {"disc": self.disc,
                     "disc_optimizer": build_adamw(self.disc, cfg.optim, run.batch_size, device),
                     "disc_scaler": make_scaler(run.precision, device)}
        ema = EMA(self.tokenizer, run.ema_decay) if run.ema_decay else None
        self.monitor = CodebookMonitor(tok_cfg.vocab_size, len(tok_cfg.patch_nums), device)
        self.state = RunState(model=self.tokenizer, optimizer=optimizer, scaler=scaler, ema=ema,
                              extra=extra)
        self._residuals: torch.Tensor | None = None  # of the last step, for restarts

    def config_record(self) -> dict[str, Any]:
        return {"tokenizer": self.cfg.tokenizer.to_dict(), "train": dataclasses.asdict(self.cfg)}

    def start(self, step: int) -> None:
        run = self.run
        sampler = StepBatchSampler(self.splits.train.targets, run.batch_size, run.seed,
                                   self.ctx, step, run.class_balanced, run.class_balance_power)
        self.batches = image_batches(self.splits.train, sampler, run.num_workers,
                                     self.ctx.device)

    def train_step(self, step: int, total: int) -> StepOutput:
        cfg, run, device, state = self.cfg, self.run, self.ctx.device, self.state
        images, _ = next(self.batches)
        lr = apply_schedule(state.optimizer, step, total, cfg.optim, self.peak)
        with autocast(run.precision, device):
            loss, recon, stats, vq = self.model(images)
        use_disc = self.disc is not None and step >= cfg.disc_start
        if use_disc:
            with autocast(run.precision, device):
                loss = loss + cfg.disc_weight * generator_hinge_loss(self.disc(recon))
        grad_norm = optimizer_step(loss, state.optimizer, state.scaler,
                                   self.tokenizer.parameters(), cfg.optim.grad_clip)
        if use_disc:
            self._discriminator_step(step, total, images, recon.detach())
        self.monitor.record(vq.tokens)
        self._residuals = vq.residuals
        return StepOutput(loss.detach(), lr, grad_norm, stats)

    def _discriminator_step(self, step: int, total: int, images: torch.Tensor,
                            recon: torch.Tensor) -> None:
        cfg, run, device = self.cfg, self.run, self.ctx.device
        optimizer, scaler = self.state.extra["disc_optimizer"], self.state.extra["disc_scaler"]
        apply_schedule(optimizer, step, total, cfg.optim, self.peak)
        with autocast(run.precision, device):
            logits = self.disc_model(torch.cat([images, recon])).float()
            real, fake = logits.chunk(2)
            disc_loss = discriminator_hinge_loss(real, fake)
        optimizer_step(disc_loss, optimizer, scaler, self.disc.parameters(), cfg.optim.grad_clip)

    def log_values(self) -> dict[str, float]:
        return self.monitor.usage(self.ctx)

    def after_step(self, step: int) -> None:
        cfg = self.cfg
        if cfg.restart_interval and (step - 1) % cfg.restart_interval == 0:
            restarted = self.monitor.restart_dead_codes(
                self.tokenizer.quantize.embedding.weight, self.state.optimizer, self._residuals,
                cfg.restart_threshold,
                derived_generator(self.run.seed, Purpose.CODE_RESTART, step), self.ctx)
            if restarted:
                logger.info("step %d: re-seeded %d unused codes", step, restarted)
        self._residuals = None
        if self.state.ema is not None:
            self.state.ema.update(self.tokenizer)

    def checkpoint_extras(self, step: int) -> dict[str, Any]:
        counts = self.ctx.all_reduce_sum(self.monitor.counts.clone())
        return {"monitor": {"counts": counts.cpu()}}

    def restore_extras(self, ckpt: dict[str, Any]) -> None:
        self.monitor.load_state_dict({"counts": ckpt["monitor"]["counts"] if self.ctx.is_main
                                      else torch.zeros_like(self.monitor.counts)})

    def evaluate(self, step: int, reporter: Reporter) -> float:
        weights = averaged(self.tokenizer, self.state.ema)
        psnr = evaluate_psnr(weights, self.val_data, self.ctx,
                             max(self.run.batch_size // self.ctx.world_size, 1),
                             self.cfg.val_samples)
        if self.ctx.is_main:
            _preview(weights, self.val_data, reporter, step, self.ctx.device)
        return psnr

    def preview(self, step: int, reporter: Reporter) -> None:
        _preview(averaged(self.tokenizer, self.state.ema), self.val_data, reporter, step,
                 self.ctx.device)

    def export(self, folder: Path, history: History) -> Path:
        export_tokenizer(averaged(self.tokenizer, self.state.ema), folder)
        logger.info("exported tokenizer to %s (held-out PSNR %.2f dB)", folder,
                    history["val_psnr"][-1][1])
        return folder


@torch.no_grad()
def _preview(tokenizer: MultiScaleVQTokenizer, dataset: Dataset, reporter: Reporter,
             step: int, device: torch.device, count: int = 8) -> None:
    """PNG grid: originals (top row) and their reconstructions (bottom row)."""
    count = min(count, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)]).to(device)
    recon = tokenizer.decode(tokenizer.encode(images))
    reporter.images(step, "reconstructions", (torch.cat([images, recon]) + 1) / 2, count)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m train.tokenizer`` (exit status 0, or 2 after a one-line error for bad
    configuration or data)."""
    from .cli import parse_tokenizer_args, run_entry

    return run_entry(argv, parse_tokenizer_args, main, "val_psnr",
                     "held-out PSNR {first:.2f} → {last:.2f} dB")


if __name__ == "__main__":
    raise SystemExit(cli())
