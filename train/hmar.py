"""HMAR training: stage 1 (next-scale), stage 2 (masked fine-tune) or both jointly.

``python -m train.hmar --config train/configs/emoji64-hmar.yaml`` (or ``torchrun
--nproc_per_node N -m train.hmar ...``). Library entry point: :func:`main` with a
:class:`~train.config.HMARTrainConfig`.

Tokens come from a frozen tokenizer export (encoded on the fly, or cached once for small data).
Per step: label dropout (trainer-side), stage-2 masks, teacher-forced logits through the
block-diagonal attention (:func:`kernels.attention` picks the Triton kernel for bf16/fp16 on
CUDA), the stage's losses, AdamW with the official groups and schedule, clipping, optional EMA.
Everything is checkpointed so that a resumed run continues exactly. The final model is exported
to ``<out_dir>/model`` for :meth:`hmar_core.Pipeline.from_pretrained` and the app.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hmar_core import Pipeline, SamplerConfig
from hmar_core.checkpoint import load_into
from hmar_core.config import TokenizerConfig
from hmar_core.init import init_transformer_
from hmar_core.tokenizer import MultiScaleVQTokenizer
from hmar_core.transformer import HMARTransformer

from .batches import StepBatchSampler, open_datasets
from .checkpoint import WriteHook
from .config import HMARTrainConfig, Precision, RunConfig
from .distributed import DistContext, check_replicas
from .ema import EMA, averaged
from .export import (
    export_pipeline,
    export_sampler_config,
    load_tokenizer,
    load_transformer_weights,
)
from .logging import Reporter
from .loop import autocast, make_scaler, optimizer_step, to_device_async, wrap_ddp
from .objectives import HMARObjective, drop_labels, sample_masks, scale_loss_weights, set_trainable
from .optim import apply_schedule, build_adamw
from .randomness import Purpose, derived_generator
from .skeleton import History, StepOutput, TrainerParts, train_with
from .state import RunState
from .tokens import CachedTokens, OnTheFlyTokens, encode_keys

__all__ = ["HMARTrainResult", "check_fit", "main"]

logger = logging.getLogger(__name__)

_VAL_MASK_STEP = 2**31  # key of the fixed validation masks


@dataclass
class HMARTrainResult:
    """What an HMAR run did.

    Attributes:
        step: steps completed.
        export_dir: the exported model folder (``None`` on ranks > 0).
        val_loss: (step, held-out loss of the stage) at every evaluation, including the start.
        losses: (step, training loss) at every log step.
    """

    step: int
    export_dir: Path | None
    val_loss: list[tuple[int, float]] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)


def check_fit(cfg: HMARTrainConfig, tokenizer: TokenizerConfig, num_classes: int) -> None:
    """Raise one ``ValueError`` listing every way the configuration does not fit.

    Args:
        cfg: the run configuration.
        tokenizer: the tokenizer's configuration.
        num_classes: classes of the dataset.
    """
    model, problems = cfg.transformer, []
    if cfg.run.image_size is not None and cfg.run.image_size != tokenizer.image_size:
        problems.append(f"run.image_size {cfg.run.image_size} != the tokenizer's image size "
                        f"{tokenizer.image_size}")
    for name in ("vocab_size", "latent_channels", "patch_nums"):
        if getattr(model, name) != getattr(tokenizer, name):
            problems.append(f"transformer.{name} {getattr(model, name)} != the tokenizer's "
                            f"{getattr(tokenizer, name)}")
    if model.num_classes != num_classes:
        problems.append(f"transformer.num_classes {model.num_classes} != the {num_classes} "
                        "classes of the dataset")
    if problems:
        raise ValueError("the configuration does not fit the tokenizer/data: "
                         + "; ".join(problems))


def main(cfg: HMARTrainConfig, ctx: DistContext | None = None, *,
         checkpoint_write_hook: WriteHook | None = None) -> HMARTrainResult:
    """Train as configured; resume, checkpoint, evaluate, preview and export.

    Args:
        cfg: the run configuration.
        ctx: the process context (default: from the ``torchrun`` environment).
        checkpoint_write_hook: called while checkpoints are written (tests kill runs there).

    Returns:
        :class:`HMARTrainResult`.

    Raises:
        ValueError: the data, tokenizer and configuration do not fit (before any step), or the
            output folder holds an earlier run (without ``run.resume`` / ``run.overwrite``).
        hmar_core.CheckpointError: the tokenizer or ``init_from`` cannot be loaded, or no
            checkpoint of a resumed run can be read.
    """
    outcome = train_with(cfg.run, ctx, lambda run, ctx: _HMARParts(cfg, run, ctx),
                         checkpoint_write_hook)
    history = outcome.history
    return HMARTrainResult(outcome.step, outcome.export_dir, history["val_loss"], history["losses"])


def _config_record(cfg: HMARTrainConfig) -> dict[str, Any]:
    return {"transformer": cfg.transformer.to_dict(), "train": dataclasses.asdict(cfg)}


def _build_transformer(cfg: HMARTrainConfig, device: torch.device) -> HMARTransformer:
    transformer = init_transformer_(HMARTransformer(cfg.transformer),
                                    derived_generator(cfg.run.seed, Purpose.INIT))
    if cfg.init_from is not None:
        load_into(transformer, load_transformer_weights(cfg.init_from, cfg.transformer),
                  "transformer")
        logger.info("initialised from %s", cfg.init_from)
        if cfg.stage == "stage2" and cfg.init_mask_from_ns:
            transformer.mask_blocks.load_state_dict(transformer.ns_blocks.state_dict())
            transformer.mask_head.load_state_dict(transformer.ns_head.state_dict())
            logger.info("mask blocks and mask head start as copies of the ns branch")
    set_trainable(transformer, cfg.stage)
    return transformer.to(device)


class _HMARParts(TrainerParts):
    """The HMAR transformer, its token data and losses, for :func:`train.skeleton.run_training`."""

    kind, metric, export_name = "hmar", "val_loss", "model"

    def __init__(self, cfg: HMARTrainConfig, run: RunConfig, ctx: DistContext) -> None:
        device = ctx.device
        self.cfg, self.run, self.ctx = cfg, run, ctx
        self.tokenizer = load_tokenizer(cfg.tokenizer_path, device).requires_grad_(False)
        self.splits = open_datasets(run, self.tokenizer.cfg.image_size)
        check_fit(cfg, self.tokenizer.cfg, self.splits.num_classes)
        self.transformer = transformer = _build_transformer(cfg, device)
        weights_L = scale_loss_weights(cfg.transformer.patch_nums, cfg.loss_weighting)
        self.objective = HMARObjective(transformer, self.tokenizer.quantize, cfg.stage, weights_L,
                                       cfg.mask_loss_weight, cfg.speed.resolved(device)).to(device)
        self.model = wrap_ddp(self.objective, ctx)
        if run.compile:
            self.model = torch.compile(self.model)
        optimizer = build_adamw(transformer, cfg.optim, run.batch_size, device)
        self.peak = cfg.optim.peak_lr(run.batch_size)
        ema = EMA(transformer, run.ema_decay) if run.ema_decay else None
        self.state = RunState(model=transformer, optimizer=optimizer,
                              scaler=make_scaler(run.precision, device), ema=ema)
        self.trainable = [p for p in transformer.parameters() if p.requires_grad]
        logger.info("transformer: %.2f M parameters, %.2f M trainable (%s)",
                    sum(p.numel() for p in transformer.parameters()) / 1e6,
                    sum(p.numel() for p in self.trainable) / 1e6, cfg.stage)

    def config_record(self) -> dict[str, Any]:
        return _config_record(self.cfg)

    def start(self, step: int) -> None:
        run, ctx, splits = self.run, self.ctx, self.splits
        self.local_batch = run.batch_size // ctx.world_size
        self.local = ctx.local_slice(run.batch_size)
        sampler = StepBatchSampler(splits.train.targets, run.batch_size, run.seed, ctx, step,
                                   run.class_balanced, run.class_balance_power)
        if self.cfg.token_cache_crops:
            self.source: CachedTokens | OnTheFlyTokens = CachedTokens(
                self.tokenizer, splits.train, sampler, self.cfg.token_cache_crops, ctx,
                self.local_batch, run.num_workers, self.cfg.token_cache_file)
        else:
            self.source = OnTheFlyTokens(self.tokenizer, splits.train, sampler, ctx,
                                         run.num_workers)
        val_data = splits.val if splits.val is not None else splits.train
        val_keys = list(range(min(len(val_data), self.cfg.val_samples)))
        self.val_tokens, self.val_labels = (
            encode_keys(self.tokenizer, val_data, val_keys, ctx, self.local_batch,
                        run.num_workers) if val_keys else (None, None))
        counts = Counter(splits.train.targets)
        self.preview_labels = [c for c in range(splits.num_classes)
                               if counts[c]][: self.cfg.preview_classes]

    def train_step(self, step: int, total: int) -> StepOutput:
        cfg, run, device = self.cfg, self.run, self.ctx.device
        tokens_BL, labels = self.source.batch(step)
        labels = drop_labels(labels, cfg.transformer.null_class, cfg.label_drop,
                             derived_generator(run.seed, Purpose.LABEL_DROP, step),
                             run.batch_size, self.local)
        masked = None
        if cfg.stage in ("stage2", "joint"):
            masked = sample_masks(cfg.transformer.patch_nums, run.batch_size,
                                  derived_generator(run.seed, Purpose.MASK, step),
                                  per_sample=cfg.mask_per_sample,
                                  ratio_min=cfg.mask_ratio_min,
                                  ratio_max=cfg.mask_ratio_max)[self.local]
            masked = to_device_async(masked, device)
        lr = apply_schedule(self.state.optimizer, step, total, cfg.optim, self.peak)
        with autocast(run.precision, device):
            loss, stats = self.model(tokens_BL, labels, masked)
        grad_norm = optimizer_step(loss, self.state.optimizer, self.state.scaler, self.trainable,
                                   cfg.optim.grad_clip)
        return StepOutput(loss.detach(), lr, grad_norm,
                          {k: v for k, v in stats.items() if k != "loss"})

    def after_step(self, step: int) -> None:
        if self.state.ema is not None:
            self.state.ema.update(self.transformer)

    def checkpoint_extras(self, step: int) -> dict[str, Any]:
        check_replicas(self.transformer, self.ctx, step)
        return {"class_names": list(self.splits.class_names)}

    def evaluate(self, step: int, reporter: Reporter) -> float | None:
        if self.val_tokens is None:
            return None
        return _validation_loss(self.objective, self.cfg, self.run.precision, self.val_tokens,
                                self.val_labels, self.ctx, self.local_batch)

    def preview(self, step: int, reporter: Reporter) -> None:
        _preview(self.tokenizer, averaged(self.transformer, self.state.ema), self.cfg,
                 self.preview_labels, reporter, step, self.splits.class_names)

    def export(self, folder: Path, history: History) -> Path:
        export_pipeline(self.tokenizer, averaged(self.transformer, self.state.ema), folder,
                        class_names=self.splits.class_names,
                        sampler_config=export_sampler_config(self.cfg.stage, self.cfg.sample_cfg),
                        dtype=torch.bfloat16 if self.cfg.export_dtype == "bf16" else None)
        logger.info("exported model to %s", folder)
        return folder


@torch.no_grad()
def _validation_loss(objective: HMARObjective, cfg: HMARTrainConfig, precision: Precision,
                     tokens_NL: torch.Tensor, labels_N: torch.Tensor, ctx: DistContext,
                     batch_size: int) -> float:
    """The stage's loss on held-out tokens (no label drop, fixed 50 % masks), all ranks."""
    count = tokens_NL.shape[0]
    masks = None
    if cfg.stage in ("stage2", "joint"):
        generator = derived_generator(cfg.run.seed, Purpose.MASK, _VAL_MASK_STEP)
        masks = sample_masks(cfg.transformer.patch_nums, count, generator, per_sample=False,
                             ratio_min=0.5, ratio_max=0.5).to(tokens_NL.device)
    objective.transformer.eval()
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    indices = torch.arange(ctx.rank, count, ctx.world_size, device=tokens_NL.device)
    for chunk in indices.split(batch_size):
        with autocast(precision, ctx.device):
            loss, _ = objective(tokens_NL[chunk], labels_N[chunk],
                                None if masks is None else masks[chunk])
        total += torch.stack([loss.double() * chunk.numel(),
                              torch.tensor(chunk.numel(), dtype=torch.float64,
                                           device=ctx.device)])
    objective.transformer.train()
    ctx.all_reduce_sum(total)
    return float(total[0] / total[1].clamp_min(1))


@torch.no_grad()
def _preview(tokenizer: MultiScaleVQTokenizer, transformer: HMARTransformer,
             cfg: HMARTrainConfig, labels: Sequence[int], reporter: Reporter, step: int,
             class_names: Sequence[str]) -> None:
    """PNG grid: two samples of each preview class (fixed seed, so grids are comparable)."""
    was_training = transformer.training
    with torch.random.fork_rng(devices=[]):
        pipeline = Pipeline(tokenizer, transformer, SamplerConfig(cfg=cfg.sample_cfg),
                            list(class_names))
        out = pipeline.generate(list(labels) * 2, seed=cfg.run.seed,
                                steps=0 if cfg.stage == "stage1" else None)
    transformer.train(was_training)
    reporter.images(step, "samples", out.images, len(labels))


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m train.hmar`` (exit status 0, or 2 after a one-line error for bad
    configuration or data)."""
    from .cli import parse_hmar_args, run_entry

    return run_entry(argv, parse_hmar_args, main, "val_loss",
                     "held-out loss {first:.4f} → {last:.4f}")


if __name__ == "__main__":
    raise SystemExit(cli())
