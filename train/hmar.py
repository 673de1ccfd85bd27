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
from copy import deepcopy
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
from .checkpoint import CheckpointManager, WriteHook
from .config import HMARTrainConfig, Precision
from .distributed import DistContext, check_replicas
from .ema import EMA
from .export import (
    export_pipeline,
    export_sampler_config,
    load_tokenizer,
    load_transformer_weights,
)
from .logging import Reporter
from .loop import (
    TimeBudget,
    autocast,
    configure_backends,
    make_scaler,
    optimizer_step,
    resolve_precision,
    seed_process,
    to_device_async,
    wrap_ddp,
)
from .objectives import HMARObjective, drop_labels, sample_masks, scale_loss_weights, set_trainable
from .optim import apply_schedule, build_adamw
from .randomness import Purpose, derived_generator
from .state import RunState, restore_run_state, run_state
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
        ValueError: the data, tokenizer and configuration do not fit (before any step).
        hmar_core.CheckpointError: the tokenizer or ``init_from`` cannot be loaded.
    """
    own_ctx = ctx is None
    ctx = DistContext.from_env(cfg.run.device) if ctx is None else ctx
    try:
        return _train(cfg, ctx, checkpoint_write_hook)
    finally:
        if own_ctx:
            ctx.close()


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


def _train(cfg: HMARTrainConfig, ctx: DistContext, write_hook: WriteHook | None
           ) -> HMARTrainResult:
    run, device = cfg.run, ctx.device
    budget = TimeBudget(run.max_minutes)  # the budget covers data, caches and the export
    configure_backends(ctx)
    run = dataclasses.replace(run, precision=resolve_precision(run.precision, device))
    ctx.local_slice(run.batch_size)  # raises early when the batch does not split evenly
    tokenizer = load_tokenizer(cfg.tokenizer_path, device).requires_grad_(False)
    splits = open_datasets(run, tokenizer.cfg.image_size)
    check_fit(cfg, tokenizer.cfg, splits.num_classes)
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    transformer = _build_transformer(cfg, device)
    weights_L = scale_loss_weights(cfg.transformer.patch_nums, cfg.loss_weighting)
    objective = HMARObjective(transformer, tokenizer.quantize, cfg.stage, weights_L,
                              cfg.mask_loss_weight, cfg.speed.resolved(device)).to(device)
    model = wrap_ddp(objective, ctx)
    if run.compile:
        model = torch.compile(model)
    optimizer = build_adamw(transformer, cfg.optim, run.batch_size, device)
    peak = cfg.optim.peak_lr(run.batch_size)
    scaler = make_scaler(run.precision, device)
    ema = EMA(transformer, run.ema_decay) if run.ema_decay else None
    state = RunState(model=transformer, optimizer=optimizer, scaler=scaler, ema=ema)
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    logger.info("transformer: %.2f M parameters, %.2f M trainable (%s)",
                sum(p.numel() for p in transformer.parameters()) / 1e6,
                sum(p.numel() for p in trainable) / 1e6, cfg.stage)

    manager = CheckpointManager(out / "checkpoints", write_hook=write_hook)
    seed_process(ctx, run.seed)
    start, total = 0, run.steps
    result = HMARTrainResult(step=0, export_dir=None)
    loaded = manager.load_latest(device) if run.resume else None
    if loaded is not None:
        ckpt, path = loaded
        start, total, history = restore_run_state(ckpt, state, ctx, "hmar", _config_record(cfg),
                                                  run.steps)
        result.val_loss = [tuple(x) for x in history.get("val_loss", [])]
        result.losses = [tuple(x) for x in history.get("losses", [])]
        logger.info("resumed from %s at step %d", path, start)
    if ctx.is_main:
        manager.remove_stale_temporaries()

    local_batch = run.batch_size // ctx.world_size
    local = ctx.local_slice(run.batch_size)
    sampler = StepBatchSampler(splits.train.targets, run.batch_size, run.seed, ctx, start,
                               run.class_balanced)
    if cfg.token_cache_crops:
        source: CachedTokens | OnTheFlyTokens = CachedTokens(
            tokenizer, splits.train, sampler, cfg.token_cache_crops, ctx, local_batch,
            run.num_workers)
    else:
        source = OnTheFlyTokens(tokenizer, splits.train, sampler, ctx, run.num_workers)
    val_data = splits.val if splits.val is not None else splits.train
    val_keys = list(range(min(len(val_data), cfg.val_samples)))
    val_tokens, val_labels = (encode_keys(tokenizer, val_data, val_keys, ctx, local_batch,
                                          run.num_workers) if val_keys else (None, None))
    counts = Counter(splits.train.targets)
    preview_labels = [c for c in range(splits.num_classes) if counts[c]][: cfg.preview_classes]
    null_class = cfg.transformer.null_class

    def save(step: int) -> None:
        check_replicas(transformer, ctx, step)
        ckpt = run_state(state, ctx, "hmar", step, total, _config_record(cfg),
                         {"val_loss": result.val_loss, "losses": result.losses})
        if ctx.is_main:
            ckpt["class_names"] = list(splits.class_names)
            manager.save(ckpt, step)
        ctx.barrier()

    def evaluate(step: int) -> None:
        if val_tokens is None:
            return
        loss = _validation_loss(objective, cfg, run.precision, val_tokens, val_labels, ctx,
                                local_batch)
        result.val_loss.append((step, loss))
        reporter.scalars(step, {"val/loss": loss})

    def preview(step: int) -> None:
        if ctx.is_main:
            _preview(tokenizer, _export_weights(transformer, ema), cfg, preview_labels,
                     reporter, step, splits.class_names)

    reporter = Reporter(ctx, out, total, start, tensorboard=run.tensorboard,
                        progress_bar=run.progress_bar)
    if start == 0:
        evaluate(0)
    transformer.train()
    needs_masks = cfg.stage in ("stage2", "joint")
    step, done, running = start, 0, torch.zeros(2, device=device)
    while step < total and not budget.expired(ctx):
        tokens_BL, labels = source.batch(step)
        labels = drop_labels(labels, null_class, cfg.label_drop,
                             derived_generator(run.seed, Purpose.LABEL_DROP, step),
                             run.batch_size, local)
        masked = None
        if needs_masks:
            masked = sample_masks(cfg.transformer.patch_nums, run.batch_size,
                                  derived_generator(run.seed, Purpose.MASK, step),
                                  per_sample=cfg.mask_per_sample,
                                  ratio_min=cfg.mask_ratio_min,
                                  ratio_max=cfg.mask_ratio_max)[local]
            masked = to_device_async(masked, device)
        lr = apply_schedule(optimizer, step, total, cfg.optim, peak)
        with autocast(run.precision, device):
            loss, stats = model(tokens_BL, labels, masked)
        grad_norm = optimizer_step(loss, optimizer, scaler, trainable, cfg.optim.grad_clip)
        if ema is not None:
            ema.update(transformer)
        running += torch.stack([loss.detach().float(), torch.ones((), device=device)])
        step, done = step + 1, done + 1
        reporter.step(run.batch_size)
        if step % run.log_interval == 0 or step == total:
            mean_loss = float(ctx.all_reduce_mean(running[0] / running[1]))
            running.zero_()
            result.losses.append((step, mean_loss))
            values = {"train/loss": mean_loss, "train/lr": lr, "train/grad_norm": float(grad_norm),
                      **{f"train/{k}": float(v) for k, v in stats.items() if k != "loss"}}
            reporter.scalars(step, values)
        new_total = budget.calibrate(done, step, total, ctx)
        if new_total is not None:
            total = new_total
            reporter.set_total(total)
        if run.val_interval and step % run.val_interval == 0 and step != total:
            evaluate(step)
        if run.sample_interval and step % run.sample_interval == 0 and step != total:
            preview(step)
        if run.ckpt_interval and step % run.ckpt_interval == 0 and step != total:
            save(step)
    reporter.finish_bar()
    if step < total:
        logger.info("time budget used up at step %d of %d", step, total)
    evaluate(step)
    save(step)
    result.step = step
    if ctx.is_main:
        preview(step)
        result.export_dir = export_pipeline(
            tokenizer, _export_weights(transformer, ema), out / "model",
            class_names=splits.class_names,
            sampler_config=export_sampler_config(cfg.stage, cfg.sample_cfg),
            dtype=torch.bfloat16 if cfg.export_dtype == "bf16" else None)
        logger.info("exported model to %s", result.export_dir)
    ctx.barrier()
    reporter.close()
    return result


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


def _export_weights(transformer: HMARTransformer, ema: EMA | None) -> HMARTransformer:
    """The weights to sample/export: an EMA copy when enabled, else the live network."""
    if ema is None:
        return transformer
    copy = deepcopy(transformer)  # no module construction: the global RNG stays untouched
    ema.copy_to(copy)
    return copy


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
    """``python -m train.hmar``: parse flags/YAML, set up logging, run :func:`main`."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .cli import parse_hmar_args, setup_entry_logging

    cfg = parse_hmar_args(argv)
    ctx = DistContext.from_env(cfg.run.device)
    try:
        setup_entry_logging(ctx, cfg.run.out_dir)
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            result = main(cfg, ctx)
        if ctx.is_main and result.val_loss:
            logger.info("done: %d steps, held-out loss %.4f → %.4f", result.step,
                        result.val_loss[0][1], result.val_loss[-1][1])
        return 0
    finally:
        ctx.close()


if __name__ == "__main__":
    raise SystemExit(cli())
