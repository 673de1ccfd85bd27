"""Frozen, typed configuration of the trainers.

Two top-level configs, one per entry point: :class:`TokenizerTrainConfig`
(``python -m train.tokenizer``) and :class:`HMARTrainConfig` (``python -m train.hmar``). Both
hold a :class:`RunConfig` (data, output, batch, steps, precision, intervals, seed) and an
:class:`OptimConfig` (AdamW, learning-rate rule and schedule, clipping). Library code receives
these dataclasses; YAML files, presets and command-line flags are turned into them only in
:mod:`train.cli`.

Learning rate: ``OptimConfig.lr`` when given, else the official rule
``base_lr · global_batch / 256`` (``tblr`` in the official code).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from hmar_core.config import TokenizerConfig, TransformerConfig

__all__ = [
    "HMARTrainConfig",
    "LossWeighting",
    "OptimConfig",
    "Precision",
    "RunConfig",
    "ScheduleName",
    "SpeedConfig",
    "Stage",
    "TokenizerTrainConfig",
]

Precision = Literal["fp32", "bf16", "fp16"]
ScheduleName = Literal["lin0", "cosine", "constant"]
Stage = Literal["stage1", "stage2", "joint"]
LossWeighting = Literal["none", "equal", "lognorm"]

_PRECISIONS = ("fp32", "bf16", "fp16")
_SCHEDULES = ("lin0", "cosine", "constant")
_STAGES = ("stage1", "stage2", "joint")
_WEIGHTINGS = ("none", "equal", "lognorm")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with the official parameter groups, warm-up and decay (spec §4.3).

    Attributes:
        lr: explicit peak learning rate; ``None`` uses ``base_lr · batch / 256``.
        base_lr: peak learning rate per 256 images (official ``tblr``).
        betas: AdamW betas.
        eps: AdamW epsilon.
        weight_decay: decay of the decayed group (official ``twd``).
        weight_decay_end: cosine-anneal the decay to this value (``None``: constant).
        warmup_fraction: fraction of all steps of linear warm-up (official ``ep/50`` → 0.02).
        warmup_start_ratio: warm-up starts at this fraction of the peak (official ``wp0``).
        schedule: ``"lin0"`` (official: peak for ``plateau_fraction`` of the post-warm-up
            steps, then linear decay to ``end_ratio · peak``), ``"cosine"`` or ``"constant"``.
        plateau_fraction: the flat part of ``lin0``.
        end_ratio: final learning rate as a fraction of the peak (official ``wpe``).
        grad_clip: clip the global gradient norm to this value (0 disables).
        fused: fused AdamW; ``None`` = fused on CUDA, plain on CPU.
    """

    lr: float | None = None
    base_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05
    weight_decay_end: float | None = None
    warmup_fraction: float = 0.02
    warmup_start_ratio: float = 0.005
    schedule: ScheduleName = "lin0"
    plateau_fraction: float = 0.05
    end_ratio: float = 0.1
    grad_clip: float = 2.0
    fused: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        _require(self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}")
        _require(self.base_lr > 0, f"base_lr must be > 0, got {self.base_lr}")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"betas must be two numbers in [0, 1), got {self.betas}")
        _require(self.weight_decay >= 0, "weight_decay must be >= 0")
        _require(0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)")
        _require(0 <= self.warmup_start_ratio <= 1, "warmup_start_ratio must be in [0, 1]")
        _require(self.schedule in _SCHEDULES, f"schedule must be one of {_SCHEDULES}")
        _require(0 <= self.plateau_fraction < 1, "plateau_fraction must be in [0, 1)")
        _require(0 <= self.end_ratio <= 1, "end_ratio must be in [0, 1]")
        _require(self.grad_clip >= 0, "grad_clip must be >= 0 (0 disables)")

    def peak_lr(self, global_batch: int) -> float:
        """The peak learning rate for a global batch size."""
        return self.lr if self.lr is not None else self.base_lr * global_batch / 256


@dataclass(frozen=True)
class RunConfig:
    """What every training run needs: data, output, length, precision and cadence.

    Attributes:
        data_path: an ImageFolder root (``<root>/<class>/...``, or with ``train/`` and ``val/``
            sub-folders), or an ``.npz`` written by ``python -m train.data emoji --npz``.
        out_dir: checkpoints, logs, samples and the export go here.
        image_size: expected image side; must equal the tokenizer's (``None``: take it).
        batch_size: global batch (split evenly over the ranks).
        steps: optimiser steps of the whole run (the schedule spans them).
        max_minutes: wall-clock budget; the run calibrates its schedule to fit, then stops,
            checkpoints and exports cleanly when the time is up (``None``: no budget).
        seed: seeds data order, crops, label dropout, masks, init and restarts.
        precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast + GradScaler).
        device: ``"cuda"``, ``"cpu"`` or ``None`` (CUDA when available).
        ckpt_interval: steps between checkpoints (the last two are kept); 0: only at the end.
        sample_interval: steps between PNG sample grids / reconstructions; 0: only at the end.
        log_interval: steps between TensorBoard scalars / log lines.
        val_interval: steps between held-out evaluations; 0: only at the end.
        num_workers: DataLoader worker processes.
        ema_decay: keep an exponential moving average of the weights (``None``: off).
        resume: continue from the newest readable checkpoint in ``out_dir`` (none there: start
            from step 0; checkpoints that all fail to load: an error).
        overwrite: start a new run in an ``out_dir`` that holds an earlier one, deleting its
            checkpoints, samples, TensorBoard events and export first (without ``resume`` or
            ``overwrite`` such a folder is refused, see :mod:`train.run_folder`).
        class_balanced: draw classes by ``class_balance_power`` (with replacement) instead of
            every image once per pass.
        class_balance_power: with ``class_balanced``, a class's share of the draws is
            proportional to ``count ** (1 - power)``: 1 (default) draws every class equally
            often, 0.5 in proportion to the square root of its size.
        allow_empty_classes: accept class folders without images (the emoji set has one).
        val_fraction: held-out fraction when the data has no ``val`` split.
        hflip: probability that a training image is mirrored left-right (after its crop; drawn
            from the same per-sample generator, so a resumed run sees the same flips); 0 = the
            official preprocessing (no flips).
        hflip_skip: classes never mirrored, by a part of their name (shell wildcards allowed,
            e.g. ``[_flag, _symbol]``): those whose mirror image is another thing (flags, text).
        compile: ``torch.compile`` the network.
        tensorboard: write TensorBoard scalars when ``torch.utils.tensorboard`` is importable.
        progress_bar: show a tqdm bar on rank 0.
    """

    data_path: str = ""
    out_dir: str = "runs/default"
    image_size: int | None = None
    batch_size: int = 32
    steps: int = 1000
    max_minutes: float | None = None
    seed: int = 0
    precision: Precision = "fp32"
    device: str | None = None
    ckpt_interval: int = 1000
    sample_interval: int = 0
    log_interval: int = 50
    val_interval: int = 0
    num_workers: int = 0
    ema_decay: float | None = None
    resume: bool = False
    overwrite: bool = False
    class_balanced: bool = False
    class_balance_power: float = 1.0
    allow_empty_classes: bool = False
    val_fraction: float = 0.05
    hflip: float = 0.0
    hflip_skip: tuple[str, ...] = ()
    compile: bool = False
    tensorboard: bool = True
    progress_bar: bool = True

    def __post_init__(self) -> None:
        _require(bool(self.data_path), "run.data_path is required")
        _require(self.image_size is None or self.image_size >= 1, "image_size must be >= 1")
        _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _require(self.max_minutes is None or self.max_minutes > 0, "max_minutes must be > 0")
        _require(self.seed >= 0, "seed must be >= 0")
        _require(self.precision in _PRECISIONS, f"precision must be one of {_PRECISIONS}")
        for name in ("ckpt_interval", "sample_interval", "val_interval", "num_workers"):
            _require(getattr(self, name) >= 0, f"{name} must be >= 0")
        _require(self.log_interval >= 1, "log_interval must be >= 1")
        _require(self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay must be in (0, 1)")
        _require(0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)")
        _require(0 <= self.class_balance_power <= 1,
                 f"class_balance_power must be in [0, 1], got {self.class_balance_power}")
        _require(0 <= self.hflip <= 1, f"hflip must be a probability in [0, 1], got {self.hflip}")
        _require(not isinstance(self.hflip_skip, str),
                 "hflip_skip must be a list of class-name patterns, not one string")
        object.__setattr__(self, "hflip_skip", tuple(str(p) for p in self.hflip_skip))
        _require(not (self.resume and self.overwrite),
                 "resume and overwrite exclude each other: continue the run or replace it")


@dataclass(frozen=True)
class SpeedConfig:
    """Speed options of the HMAR training step (YAML section ``speed``).

    Every switch is ``True``, ``False`` or ``None`` (the default): *auto*, resolved by
    :meth:`resolved` to on when training on CUDA (d16 256 px B=32 on an H200: 84.7 ms per step
    with all on vs 156.4 ms eager, BENCHMARKS.md) and off elsewhere (CPU runs and tests keep the
    plain eager numerics and no compile time). Unresolved, ``None`` counts as off.

    Attributes:
        compile_blocks: ``torch.compile`` the parts of every transformer block around its
            attention (AdaLN, LayerNorms, q/k normalisation, MLP, gated residuals, stochastic
            depth); the attention kernel stays outside the graphs. Training passes only.
        compile_inputs: ``torch.compile`` the float32 teacher-forcing inputs built from the
            token ids (bicubic, area, phi convolutions).
        compile_loss: ``torch.compile`` the cross-entropy, its weighting and the step's
            statistics (fused, no float32 copy of the logits kept).
        compile_mode: ``torch.compile`` mode of all of the above (``None``: the default).
        autocast_logits: run the heads' vocabulary projection under the bf16/fp16 autocast in
            training (logits upcast to float32 for the loss) instead of a float32 matmul.
            Evaluation and sampling keep the float32 head.
        async_label_check: check the label range with an asynchronous device assertion
            instead of a host synchronisation in every forward.
    """

    compile_blocks: bool | None = None
    compile_inputs: bool | None = None
    compile_loss: bool | None = None
    compile_mode: str | None = None
    autocast_logits: bool | None = None
    async_label_check: bool | None = None

    _SWITCHES = ("compile_blocks", "compile_inputs", "compile_loss", "autocast_logits",
                 "async_label_check")

    def __post_init__(self) -> None:
        modes = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        _require(self.compile_mode in modes, f"compile_mode must be one of {modes}")
        for name in self._SWITCHES:
            _require(getattr(self, name) in (None, True, False),
                     f"speed.{name} must be true, false or null (auto)")

    def resolved(self, device: torch.device | str) -> SpeedConfig:
        """Auto switches (``None``) decided for ``device``: on for CUDA, off elsewhere."""
        on = torch.device(device).type == "cuda"
        return dataclasses.replace(self, **{name: on if getattr(self, name) is None
                                            else getattr(self, name) for name in self._SWITCHES})

    @classmethod
    def fastest(cls) -> SpeedConfig:
        """Every option on (what ``benchmarks/train_step.py`` calls ``all``)."""
        return cls(compile_blocks=True, compile_inputs=True, compile_loss=True,
                   autocast_logits=True, async_label_check=True)

    @property
    def compile_kwargs(self) -> dict[str, str]:
        """Keyword arguments of ``torch.compile``."""
        return {} if self.compile_mode is None else {"mode": self.compile_mode}


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """Training of the multi-scale residual VQ-VAE.

    Attributes:
        run: data, output, length, cadence.
        tokenizer: the architecture (a preset via ``train.cli``, e.g. ``emoji64``).
        optim: optimiser (defaults: constant-ish lr 3e-4 peak, no decay on the codebook).
        l1_weight, l2_weight: pixel reconstruction losses.
        commitment_beta: VQ commitment weight (encoder pulled toward its codes), 0.25.
        codebook_weight: VQ codebook loss weight (codes and phi pulled toward the encoder).
        disc_weight: weight of the patch-discriminator (hinge) loss; 0 disables it.
        disc_start: step from which the discriminator trains and its loss is used.
        disc_channels, disc_layers: size of the patch discriminator.
        restart_interval: steps between dead-code restarts (0 disables); also at step 0,
            which initialises the codebook from encoder outputs.
        restart_threshold: codes used fewer times than this over an interval are re-seeded.
        val_samples: held-out images used for PSNR.
    """

    run: RunConfig
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig.from_name("tiny"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=3e-4, weight_decay=0.0, warmup_fraction=0.01, schedule="cosine", end_ratio=0.1))
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    commitment_beta: float = 0.25
    codebook_weight: float = 1.0
    disc_weight: float = 0.0
    disc_start: int = 0
    disc_channels: int = 64
    disc_layers: int = 3
    restart_interval: int = 100
    restart_threshold: float = 1.0
    val_samples: int = 256

    def __post_init__(self) -> None:
        for name in ("l1_weight", "l2_weight", "commitment_beta", "codebook_weight",
                     "disc_weight", "restart_threshold"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, f"{name} must be >= 0, got {value}")
        _require(self.l1_weight + self.l2_weight > 0, "need l1_weight or l2_weight > 0")
        for name in ("disc_start", "restart_interval", "val_samples"):
            _require(getattr(self, name) >= 0, f"{name} must be >= 0")
        _require(self.disc_channels >= 1 and self.disc_layers >= 1,
                 "disc_channels and disc_layers must be >= 1")


@dataclass(frozen=True)
class HMARTrainConfig:
    """Two-stage HMAR training on tokens of a frozen tokenizer (spec §4).

    Attributes:
        run: data, output, length, cadence.
        tokenizer_path: folder with ``config.json`` + ``tokenizer.safetensors`` (the export of
            ``python -m train.tokenizer``, or a full model folder).
        transformer: the network (a preset via ``train.cli``, e.g. ``emoji-d8``); its vocab,
            latent channels and pyramid must match the tokenizer and its ``num_classes`` the
            dataset.
        optim: optimiser (defaults = the official recipe).
        stage: ``"stage1"`` next-scale prediction (mask branch frozen), ``"stage2"`` masked
            fine-tune (base blocks, ns branch and embeddings frozen), ``"joint"`` (both losses
            every step, everything trains).
        init_from: weights to start from (a model folder or a training checkpoint); stage 2
            needs the stage-1 result here.
        init_mask_from_ns: in stage 2, start the mask blocks and mask head as copies of the
            trained ns blocks and head (official: the stage-2 model is the stage-1 model).
        loss_weighting: stage-1 per-position weights: ``"none"`` (1/L), ``"equal"`` (1/pn²),
            ``"lognorm"`` (official HMAR).
        mask_loss_weight: weight of the mask loss in ``joint``.
        label_drop: probability of replacing a label by the null class (CFG), 0.1.
        mask_per_sample: draw a mask ratio and positions per sample instead of one set for the
            whole batch (official: one set per batch).
        mask_ratio_min, mask_ratio_max: the mask ratio p ~ U[min, max); ceil(pn²·p) positions,
            at least one, are masked at every scale ≥ 1.
        token_cache_crops: encode the dataset once for this many crop epochs and train from
            the cached tokens (epoch e uses crop e mod n); 0 encodes every batch on the fly.
        token_cache_file: with ``token_cache_crops``, a safetensors file that keeps the
            encoded tokens for the next run (the next stage, a resumed run): loaded when probe
            samples re-encode to the same tokens, else encoded again and rewritten.
        export_dtype: dtype of the exported weights (``"bf16"`` or ``"fp32"``).
        sample_cfg: CFG scale of the sample grids and of the exported sampler defaults.
        preview_classes: number of classes shown in the sample grids.
        val_samples: held-out images whose loss is tracked.
        speed: speed options of the training step (all off: exact previous behaviour).
    """

    run: RunConfig
    tokenizer_path: str = ""
    transformer: TransformerConfig = field(
        default_factory=lambda: TransformerConfig.from_name("tiny"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    stage: Stage = "stage1"
    init_from: str | None = None
    init_mask_from_ns: bool = True
    loss_weighting: LossWeighting = "lognorm"
    mask_loss_weight: float = 1.0
    label_drop: float = 0.1
    mask_per_sample: bool = False
    mask_ratio_min: float = 0.0
    mask_ratio_max: float = 1.0
    token_cache_crops: int = 0
    token_cache_file: str | None = None
    export_dtype: Literal["bf16", "fp32"] = "bf16"
    sample_cfg: float = 3.0
    preview_classes: int = 8
    val_samples: int = 512
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    def __post_init__(self) -> None:
        _require(bool(self.tokenizer_path), "tokenizer_path is required (a tokenizer export)")
        _require(self.stage in _STAGES, f"stage must be one of {_STAGES}, got {self.stage!r}")
        _require(self.loss_weighting in _WEIGHTINGS,
                 f"loss_weighting must be one of {_WEIGHTINGS}, got {self.loss_weighting!r}")
        _require(0 <= self.label_drop < 1, "label_drop must be in [0, 1)")
        _require(0 <= self.mask_ratio_min < self.mask_ratio_max <= 1,
                 "need 0 <= mask_ratio_min < mask_ratio_max <= 1")
        _require(self.mask_loss_weight >= 0, "mask_loss_weight must be >= 0")
        _require(self.token_cache_crops >= 0, "token_cache_crops must be >= 0")
        _require(self.export_dtype in ("bf16", "fp32"), "export_dtype must be bf16 or fp32")
        _require(self.stage == "stage1" or self.transformer.has_mask_branch,
                 f"stage {self.stage!r} needs an HMAR transformer (kind='hmar')")
        _require(self.stage != "stage2" or self.init_from is not None,
                 "stage2 needs init_from (the stage-1 model folder or checkpoint)")
        _require(self.preview_classes >= 1, "preview_classes must be >= 1")
        _require(math.isfinite(self.sample_cfg) and self.sample_cfg >= 0, "sample_cfg must be >= 0")
        _require(self.val_samples >= 0, "val_samples must be >= 0")
