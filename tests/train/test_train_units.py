"""Pure pieces of the trainers: loss weights, schedules, groups, masks, sampler, VQ, EMA, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hmar_core.config import TokenizerConfig, TransformerConfig
from hmar_core.init import init_tokenizer_, init_transformer_
from hmar_core.tokenizer import MultiScaleVQTokenizer
from hmar_core.transformer import HMARTransformer
from train.batches import StepBatchSampler
from train.checkpoint import CheckpointManager, atomic_save
from train.cli import build_hmar_config, build_tokenizer_config, load_yaml, parse_hmar_args
from train.config import OptimConfig, RunConfig
from train.distributed import DistContext
from train.ema import EMA
from train.loop import TimeBudget
from train.objectives import drop_labels, sample_masks, scale_loss_weights, set_trainable
from train.optim import lr_at, param_groups
from train.randomness import derived_generator
from train.vq import CodebookMonitor, quantize_for_training

REPO = Path(__file__).resolve().parents[2]
PATCH_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def _totals(weights: torch.Tensor, patch_nums: tuple[int, ...]) -> list[float]:
    sizes = [p * p for p in patch_nums]
    return [float(part.sum()) for part in weights.split(sizes)]


def test_lognorm_weights_match_the_official_per_scale_totals():
    weights = scale_loss_weights(PATCH_256, "lognorm")
    expected = [0.0247, 0.0642, 0.1150, 0.1379, 0.1402, 0.1329, 0.1208, 0.1054, 0.0882, 0.0709]
    assert weights.shape == (680,)
    assert _totals(weights, PATCH_256) == pytest.approx(expected, abs=5e-5)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)


def test_none_and_equal_weights():
    none = scale_loss_weights(PATCH_256, "none")
    assert torch.allclose(none, torch.full((680,), 1 / 680))
    equal = scale_loss_weights(PATCH_256, "equal")
    assert _totals(equal, PATCH_256) == pytest.approx([1.0] * 10)


def test_lr_schedule_warmup_plateau_and_end():
    cfg = OptimConfig(lr=1.0, warmup_fraction=0.1, warmup_start_ratio=0.005, end_ratio=0.1)
    total = 1000
    assert lr_at(0, total, cfg, 1.0) == pytest.approx(0.005)
    assert lr_at(50, total, cfg, 1.0) == pytest.approx(0.005 + 0.995 * 0.5)
    assert lr_at(100, total, cfg, 1.0) == pytest.approx(1.0)
    assert lr_at(140, total, cfg, 1.0) == pytest.approx(1.0)  # inside the 5 % plateau
    assert lr_at(999, total, cfg, 1.0) == pytest.approx(0.1)
    values = [lr_at(s, total, cfg, 1.0) for s in range(145, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert OptimConfig(base_lr=1e-4).peak_lr(768) == pytest.approx(3e-4)


def test_param_groups_follow_the_official_no_decay_rules():
    model = HMARTransformer(TransformerConfig.from_name("tiny"))
    groups = {g["group"]: set(g["names"]) for g in param_groups(model, 0.05)}
    no_decay = groups["no_decay"]
    for name in ("pos_embed", "pos_start", "level_embed.weight", "word_embed_bias",
                 "base_blocks.0.attn.log_scale", "base_blocks.0.attn.q_bias",
                 "ns_head.out.bias"):
        assert name in no_decay
    for name in ("class_embed.weight", "word_embed.weight", "base_blocks.0.attn.qkv.weight",
                 "mask_embed"):
        assert name in groups["decay"]


def test_set_trainable_per_stage():
    model = HMARTransformer(TransformerConfig.from_name("tiny"))
    set_trainable(model, "stage2")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("mask_blocks.", "mask_head.", "mask_embed"))
                             for n in trainable)
    set_trainable(model, "stage1")
    assert not any(p.requires_grad for n, p in model.named_parameters()
                   if n.startswith("mask_"))
    assert model.base_blocks[0].ffn.fc1.weight.requires_grad


@pytest.mark.parametrize("per_sample", [False, True])
def test_masks_ceil_rule_and_scale0(per_sample):
    patch_nums = (1, 2, 3, 4)
    for step in range(20):
        masks = sample_masks(patch_nums, 6, derived_generator(1, 3, step), per_sample=per_sample)
        assert masks.shape == (6, 30) and masks.dtype == torch.bool
        assert not masks[:, 0].any()
        counts = [m.sum(1) for m in masks[:, 1:].split([4, 9, 16], dim=1)]
        for row in range(6):
            c = [int(x[row]) for x in counts]
            assert all(k >= 1 for k in c)
            # one ratio p per row: ceil(n p) is monotone in n
            assert c[0] <= c[1] <= c[2]
        if not per_sample:
            assert (masks == masks[0]).all()


def test_label_drop_rate_and_slices():
    labels = torch.zeros(4000, dtype=torch.int64)
    dropped = drop_labels(labels, 10, 0.1, derived_generator(0, 2, 0), 4000, slice(0, 4000))
    assert 0.08 < float((dropped == 10).float().mean()) < 0.12
    half = drop_labels(labels[2000:], 10, 0.1, derived_generator(0, 2, 0), 4000,
                       slice(2000, 4000))
    assert torch.equal(half, dropped[2000:])


def test_step_sampler_is_resumable_and_rank_consistent():
    targets = [i % 3 for i in range(25)]
    single = StepBatchSampler(targets, 8, 7, DistContext())
    ranks = [StepBatchSampler(targets, 8, 7, DistContext(rank=r, world_size=2)) for r in (0, 1)]
    resumed = StepBatchSampler(targets, 8, 7, DistContext(), start_step=5)
    stream = iter(single)
    batches = [next(stream) for _ in range(9)]
    assert next(iter(resumed)) == batches[5]
    for step in range(9):
        assert ranks[0].local_keys(step) + ranks[1].local_keys(step) == batches[step]
    epoch0 = [k for b in batches[:4] for k in b][:25]
    assert sorted(index for _, index in epoch0) == list(range(25))  # a permutation per epoch
    balanced = StepBatchSampler(targets, 8, 7, DistContext(), class_balanced=True)
    assert len(balanced.local_keys(0)) == 8


def test_step_sampler_tempered_balance():
    """``balance_power`` reaches the draws: at 0.5 a class 16x as large is drawn 4x as often."""
    targets = [0] * 320 + [1] * 20
    draws = StepBatchSampler(targets, 20, 3, DistContext(), class_balanced=True,
                             balance_power=0.5).epoch_order(0)
    share = float((draws >= 320).double().mean())
    assert abs(share - 0.2) < 0.05, share  # natural 1/17 = 0.06, balanced 0.5
    with pytest.raises(ValueError, match="class_balance_power"):
        RunConfig(data_path="data", class_balance_power=2.0)


def test_training_quantizer_matches_inference():
    tokenizer = init_tokenizer_(MultiScaleVQTokenizer(TokenizerConfig.from_name("tiny")),
                                torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokenizer.quantize.embedding.weight.normal_(generator=torch.Generator().manual_seed(1))
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    latent = tokenizer.encode_latent(images)
    out = quantize_for_training(latent, tokenizer.quantize.codebook, tokenizer.quantize.phis(),
                                tokenizer.patch_nums)
    tokens, f_hats = tokenizer.encode_with_fhat(images)
    for a, b in zip(out.tokens, tokens):
        assert torch.equal(a, b)
    torch.testing.assert_close(out.f_hat, f_hats[-1])
    torch.testing.assert_close(out.f_hat_st, f_hats[-1])
    (out.f_hat_st.sum() + out.codebook + out.commitment).backward()
    assert tokenizer.encoder.conv_in.weight.grad is not None
    assert tokenizer.quantize.embedding.weight.grad.abs().sum() > 0
    assert out.residuals.shape == (3 * 30, 8)


def test_dead_code_restart_reseeds_from_candidates():
    monitor = CodebookMonitor(8, 2, torch.device("cpu"))
    monitor.record([torch.tensor([[0, 0]]), torch.tensor([[1, 0, 1, 0]])])
    codebook = torch.zeros(8, 2)
    candidates = torch.arange(20.0).view(10, 2)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(codebook)])
    restarted = monitor.restart_dead_codes(codebook, optimizer, candidates, 1.0,
                                           torch.Generator().manual_seed(0), DistContext())
    assert restarted == 6
    assert torch.equal(codebook[:2], torch.zeros(2, 2))
    rows = {tuple(r.tolist()) for r in candidates}
    assert all(tuple(r.tolist()) in rows for r in codebook[2:])
    assert monitor.counts.sum() == 0


def test_ema_update_and_copy():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    start = ema.shadow["weight"].clone()
    ema.update(model)  # first decay = min(0.5, 1/10) = 0.1
    torch.testing.assert_close(ema.shadow["weight"], 0.1 * start + 0.9 * model.weight)
    target = torch.nn.Linear(2, 2)
    ema.copy_to(target)
    torch.testing.assert_close(target.weight, ema.shadow["weight"])


def test_atomic_save_and_keep_last_two(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3):
        manager.save({"step": step, "x": torch.full((3,), float(step))}, step)
    assert [p.name for p in manager.paths()] == ["ckpt-00000003.pt", "ckpt-00000002.pt"]
    state, path = manager.load_latest()
    assert state["step"] == 3 and path.name == "ckpt-00000003.pt"
    (tmp_path / "ckpt-00000004.pt").write_bytes(b"garbage")  # a damaged newest file
    state, _ = manager.load_latest()
    assert state["step"] == 3
    atomic_save({"a": 1}, tmp_path / "plain.pt")
    assert not list(tmp_path.glob("*.tmp"))


def test_shipped_yaml_configs_parse():
    tok = build_tokenizer_config(load_yaml(REPO / "train/configs/emoji64-tokenizer.yaml"))
    assert tok.tokenizer.image_size == 64 and tok.tokenizer.patch_nums == PATCH_256
    hmar = build_hmar_config(load_yaml(REPO / "train/configs/emoji64-hmar.yaml"))
    assert hmar.transformer.vocab_size == tok.tokenizer.vocab_size
    assert hmar.transformer.patch_nums == tok.tokenizer.patch_nums
    cfg = parse_hmar_args(["--config", str(REPO / "train/configs/emoji64-hmar.yaml"),
                           "--stage", "stage2", "--init-from", "runs/x/model", "--steps", "7",
                           "--set", "optim.lr=1e-2", "--max-minutes", "3"])
    assert (cfg.stage, cfg.init_from, cfg.run.steps, cfg.optim.lr, cfg.run.max_minutes) == (
        "stage2", "runs/x/model", 7, 0.01, 3.0)


def test_unknown_config_field_is_a_clear_error():
    with pytest.raises(ValueError, match="known fields"):
        build_hmar_config({"run": {"data_path": "x", "stepz": 3}, "tokenizer_path": "t"})


def test_demo_model_sizes_fit_the_shipping_budget():
    """The README's suggested demo sizes: ≤ 48 MiB of bf16 weights in total."""
    hmar = build_hmar_config(load_yaml(REPO / "train/configs/emoji64-hmar.yaml"))
    tok = build_tokenizer_config(load_yaml(REPO / "train/configs/emoji64-tokenizer.yaml"))
    with torch.device("meta"):
        count = sum(p.numel() for p in HMARTransformer(hmar.transformer).parameters())
        count += sum(p.numel() for p in MultiScaleVQTokenizer(tok.tokenizer).parameters())
    assert count * 2 / 2**20 <= 48


def test_init_is_reproducible():
    cfg = TransformerConfig.from_name("tiny")
    a = init_transformer_(HMARTransformer(cfg), derived_generator(3, 6))
    b = init_transformer_(HMARTransformer(cfg), derived_generator(3, 6))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert math.isfinite(float(a.pos_embed.detach().sum()))


def test_train_step_benchmark_runs_on_cpu(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_step_benchmark",
                                                  REPO / "benchmarks" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    markdown = tmp_path / "BENCHMARKS.md"
    assert module.main(["--device", "cpu", "--preset", "tiny", "--batch-size", "2",
                        "--steps", "2", "--warmup", "1", "--precision", "fp32",
                        "--backends", "reference", "triton", "--markdown",
                        str(markdown)]) == 0
    text = markdown.read_text()
    assert "| reference | network |" in text and "not available" in text
    assert "163.4" in text and "Command: `python -m benchmarks.train_step" in text


def test_time_budget_calibrates_the_schedule_and_expires():
    now = [0.0]
    budget = TimeBudget(1.0, warmup_steps=2, measure_steps=4, clock=lambda: now[0])
    ctx = DistContext()
    assert budget.deadline == pytest.approx(60 - 3)  # 5 % reserve for evaluation and export
    total = 10_000
    for done in range(1, 7):
        now[0] += 10.0 if done <= 2 else 1.0  # slow warm-up steps, then 1 s per step
        new_total = budget.calibrate(done, done, total, ctx)
        if done < 6:
            assert new_total is None
    # after step 6 at t = 24 s: (57 - 24) s left at 1 s per step
    assert new_total == 6 + 33
    assert not budget.expired(ctx)
    now[0] = 57.0
    assert budget.expired(ctx)
    assert TimeBudget(None).calibrate(25, 25, total, ctx) is None
