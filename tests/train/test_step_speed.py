"""Speed options of the HMAR training step (``train.config.SpeedConfig``), on CPU.

* Off (the default), nothing changes: the split block equals the previous block bit for bit
  (outputs and gradients, stochastic depth included) and the objective equals the previous loss.
* ``compile_*``: the compiled step equals the eager one within float32 tolerance (loss and every
  gradient), with stochastic depth drawing the same masks.
* ``autocast_logits``: bf16 logits in training only, finite and close to the float32 head, and a
  few steps still learn; evaluation keeps the float32 head exactly.
* ``async_label_check``: no host check, labels out of range still fail.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hmar_core.config import TokenizerConfig, TransformerConfig
from hmar_core.init import init_transformer_
from hmar_core.tokenizer import MultiScaleQuantizer
from hmar_core.transformer import AdaLNBlock, HMARTransformer
from train.cli import build_hmar_config
from train.config import SpeedConfig
from train.loop import to_device_async
from train.objectives import HMARObjective, scale_loss_weights, set_trainable

BATCH = 4


def _previous_block_forward(block: AdaLNBlock, x_BLC: torch.Tensor, cond_BC: torch.Tensor,
                            mask) -> torch.Tensor:
    """The block's forward as it was before the split (kept here as the reference)."""
    attn, ffn = block.attn, block.ffn

    def drop(x: torch.Tensor) -> torch.Tensor:
        if not block.training or block.drop_path == 0.0:
            return x
        keep = 1.0 - block.drop_path
        return x * x.new_empty(x.shape[0], 1, 1).bernoulli_(keep).div_(keep)

    def self_attention(h: torch.Tensor) -> torch.Tensor:
        batch, length, width = h.shape
        bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
        qkv = F.linear(h, attn.qkv.weight, bias).view(batch, length, 3, attn.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scale_mul = attn.log_scale.clamp_max(attn.max_scale_mul).exp()
        q = F.normalize(q, dim=-1).mul(scale_mul).to(v.dtype)
        k = F.normalize(k, dim=-1).to(v.dtype)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        dense = mask.dense(q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense, scale=1.0)
        return attn.proj(out.transpose(1, 2).reshape(batch, length, width))

    ada = block.ada_lin(F.silu(cond_BC)).view(-1, 1, 6, x_BLC.shape[-1])
    gamma1, gamma2, scale1, scale2, shift1, shift2 = ada.unbind(2)
    h = F.layer_norm(x_BLC, x_BLC.shape[-1:], eps=block.eps).mul(scale1 + 1).add(shift1)
    x_BLC = x_BLC + drop(self_attention(h).mul(gamma1))
    h = F.layer_norm(x_BLC, x_BLC.shape[-1:], eps=block.eps).mul(scale2 + 1).add(shift2)
    mlp = ffn.fc2(F.gelu(ffn.fc1(h), approximate="tanh"))
    return x_BLC + drop(mlp.mul(gamma2))


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights of a useful size everywhere (the training init zeroes gates and heads)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model


def _objective(speed: SpeedConfig | None = None, drop_path: float = 0.2, seed: int = 0
               ) -> HMARObjective:
    cfg = TransformerConfig.from_name("tiny", drop_path_rate=drop_path,
                                      attention_backend="reference")
    transformer = _randomised(HMARTransformer(cfg), seed)
    set_trainable(transformer, "stage1")
    quantizer = MultiScaleQuantizer(TokenizerConfig.from_name("tiny"))
    _randomised(quantizer, seed + 1).requires_grad_(False)
    return HMARObjective(transformer, quantizer, "stage1",
                         scale_loss_weights(cfg.patch_nums, "lognorm"), speed=speed)


def _batch(cfg: TransformerConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(cfg.vocab_size, (BATCH, cfg.seq_len), generator=gen)
    labels = torch.randint(cfg.num_classes + 1, (BATCH,), generator=gen)
    return tokens, labels


def _loss_and_grads(objective: HMARObjective, tokens: torch.Tensor, labels: torch.Tensor,
                    autocast: bool = False) -> tuple[torch.Tensor, dict, dict[str, torch.Tensor]]:
    objective.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # stochastic depth
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, stats = objective(tokens, labels)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in objective.transformer.named_parameters()
             if p.grad is not None}
    return loss.detach(), stats, grads


@pytest.mark.parametrize("autocast", [False, True])
def test_split_block_equals_the_previous_block_bit_for_bit(autocast):
    cfg = TransformerConfig.from_name("tiny", drop_path_rate=0.5, attention_backend="reference")
    model = _randomised(HMARTransformer(cfg), 3).train()
    block = model.base_blocks[0]
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(BATCH, cfg.seq_len, cfg.width, generator=gen)
    cond = torch.randn(BATCH, cfg.width, generator=gen)
    results = []
    for forward in (block.forward, lambda *a: _previous_block_forward(block, *a)):
        block.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = forward(x, cond, model.scale_mask)
        out.float().square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in block.parameters()]))
    (new, new_grads), (old, old_grads) = results
    assert new.dtype == old.dtype and torch.equal(new, old)
    assert all(torch.equal(a, b) for a, b in zip(new_grads, old_grads))


def test_default_objective_equals_the_previous_loss():
    objective = _objective()
    tokens, labels = _batch(objective.transformer.cfg)
    loss, stats, _ = _loss_and_grads(objective, tokens, labels)
    torch.manual_seed(123)
    with torch.no_grad():
        x_ns, _ = objective.inputs(tokens, need_mask_input=False)
        logits = objective.transformer(labels, x_ns)
    ce = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none")
    expected = (ce.view(BATCH, -1) * objective.weights_L).sum(1).mean()
    assert logits.dtype == torch.float32
    assert torch.equal(loss, expected)
    assert torch.equal(stats["ns_acc"], (logits.argmax(-1) == tokens).float().mean())


def test_compiled_step_equals_eager_step():
    """compile_blocks + compile_inputs + compile_loss (inductor on CPU) vs eager, float32, with
    stochastic depth on: same loss, statistics and gradients within float32 tolerance."""
    eager = _objective()
    compiled = _objective(SpeedConfig(compile_blocks=True, compile_inputs=True,
                                      compile_loss=True))
    tokens, labels = _batch(eager.transformer.cfg)
    loss_e, stats_e, grads_e = _loss_and_grads(eager, tokens, labels)
    for _ in range(2):  # the second call runs the cached graphs
        loss_c, stats_c, grads_c = _loss_and_grads(compiled, tokens, labels)
    assert torch.allclose(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for key in stats_e:
        assert torch.allclose(stats_c[key], stats_e[key], rtol=1e-5, atol=1e-6), key
    assert grads_c.keys() == grads_e.keys() and len(grads_e) > 10
    for name, grad in grads_e.items():
        scale = grad.abs().max().clamp_min(1e-6)
        assert (grads_c[name] - grad).abs().max() <= 1e-4 * scale, name
    # evaluation runs the plain code: exactly the eager numbers
    eager.transformer.eval()
    compiled.transformer.eval()
    with torch.no_grad():
        assert torch.equal(compiled(tokens, labels)[0], eager(tokens, labels)[0])


def test_stochastic_depth_really_drops_in_the_compiled_blocks():
    """Different RNG seeds give different losses (masks reach the compiled graph)."""
    objective = _objective(SpeedConfig(compile_blocks=True), drop_path=0.5)
    tokens, labels = _batch(objective.transformer.cfg)
    losses = set()
    for seed in range(4):
        torch.manual_seed(seed)
        with torch.no_grad():
            losses.add(float(objective(tokens, labels)[0]))
    assert len(losses) > 1


def test_autocast_logits_are_bf16_in_training_and_float32_in_eval():
    plain = _objective(drop_path=0.0)
    fast = _objective(SpeedConfig(autocast_logits=True), drop_path=0.0)
    tokens, labels = _batch(plain.transformer.cfg)
    x_ns, _ = plain.inputs(tokens, need_mask_input=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast._logits(labels, x_ns).dtype == torch.bfloat16
        assert plain._logits(labels, x_ns).dtype == torch.float32
    loss_plain, _, grads_plain = _loss_and_grads(plain, tokens, labels, autocast=True)
    loss_fast, _, grads_fast = _loss_and_grads(fast, tokens, labels, autocast=True)
    assert math.isfinite(float(loss_fast))
    assert abs(float(loss_fast) - float(loss_plain)) <= 2e-2 * abs(float(loss_plain))
    head = "ns_head.out.weight"
    assert grads_fast[head].dtype == torch.float32  # master weights stay float32
    cosine = F.cosine_similarity(grads_fast[head].flatten(), grads_plain[head].flatten(), dim=0)
    assert cosine > 0.99
    fast.transformer.eval()
    plain.transformer.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast._logits(labels, x_ns).dtype == torch.float32
        assert torch.equal(fast(tokens, labels)[0], plain(tokens, labels)[0])


def test_autocast_logits_training_learns():
    """A few AdamW steps on one batch with bf16 logits (and the async label check) lower the
    loss clearly and keep it finite."""
    objective = _objective(SpeedConfig(autocast_logits=True, async_label_check=True),
                           drop_path=0.0)
    tokens, labels = _batch(objective.transformer.cfg)
    params = [p for p in objective.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(25):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = objective(tokens, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        optimizer.step()
        losses.append(float(loss))
    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < 0.7 * losses[0]


def test_async_label_check_still_rejects_bad_labels():
    cfg = TransformerConfig.from_name("tiny")
    model = init_transformer_(HMARTransformer(cfg), torch.Generator().manual_seed(0))
    x_ns = torch.zeros(2, cfg.seq_len - 1, cfg.latent_channels)
    good = torch.tensor([0, cfg.num_classes])
    assert model(good, x_ns, sync_label_check=False).shape == (2, cfg.seq_len, cfg.vocab_size)
    with pytest.raises(RuntimeError, match="class ids"):
        model(torch.tensor([0, cfg.num_classes + 1]), x_ns, sync_label_check=False)
    with pytest.raises(RuntimeError, match="class ids"):
        model(torch.tensor([-1, 0]), x_ns, sync_label_check=False)
    with pytest.raises(ValueError, match="int64"):
        model(good.int(), x_ns, sync_label_check=False)
    with pytest.raises(ValueError, match="class ids"):  # the default still raises ValueError
        model(torch.tensor([0, cfg.num_classes + 1]), x_ns)


def test_speed_section_of_the_yaml_config():
    base = {"run": {"data_path": "data"}, "tokenizer_path": "tok"}
    assert build_hmar_config(base).speed == SpeedConfig()
    cfg = build_hmar_config({**base, "speed": {"compile_blocks": True, "autocast_logits": True,
                                               "compile_mode": "max-autotune-no-cudagraphs"}})
    assert cfg.speed.compile_blocks and cfg.speed.autocast_logits
    assert cfg.speed.compile_kwargs == {"mode": "max-autotune-no-cudagraphs"}
    with pytest.raises(ValueError, match="known fields"):
        build_hmar_config({**base, "speed": {"compile_everything": True}})
    with pytest.raises(ValueError, match="compile_mode"):
        build_hmar_config({**base, "speed": {"compile_mode": "fastest"}})
    fastest = SpeedConfig.fastest()
    assert all(getattr(fastest, name) for name in (
        "compile_blocks", "compile_inputs", "compile_loss", "autocast_logits",
        "async_label_check"))


def test_to_device_async_keeps_values():
    keys = torch.arange(12).view(6, 2)[:, 0]  # a strided view
    moved = to_device_async(keys, torch.device("cpu"))
    assert torch.equal(moved, keys)


def test_benchmark_compares_option_sets_and_profiles_on_cpu(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "train_step.py"
    spec = importlib.util.spec_from_file_location("train_step_benchmark_options", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "rows.json"
    assert module.main(["--device", "cpu", "--preset", "tiny", "--batch-size", "2",
                        "--steps", "2", "--warmup", "1", "--precision", "fp32",
                        "--backends", "reference", "--variants", "trainer", "network",
                        "--options", "default", "autocast-logits", "async-labels",
                        "--profile", "--profile-steps", "1",
                        "--profile-rows", "5", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    labels = [(row["variant"], row["options"]) for row in rows]
    assert ("network", "async-labels") in labels and len(rows) == 6
    assert all(row["median_ms"] > 0 and row["pipelined_ms"] > 0 for row in rows)
    assert all(len(row["profile"]["top"]) == 5 for row in rows)
    printed = capsys.readouterr().out
    assert "| reference | trainer | autocast-logits |" in printed and "by category" in printed


def test_trainer_runs_with_every_speed_option(tokenizer_run, image_root, tmp_path):
    """``python -m train.hmar`` with the ``speed`` section all on (bf16 autocast, compiled
    parts): the loss stays finite and falls, evaluation and export still work."""
    from train_helpers import hmar_config, one_thread

    from train.hmar import main

    cfg = hmar_config(image_root, tmp_path, tokenizer_run.export_dir, steps=40, log_interval=10,
                      precision="bf16", fields={"speed": SpeedConfig.fastest()},
                      transformer={"drop_path_rate": 0.1})
    with one_thread():
        result = main(cfg)
    losses = [loss for _, loss in result.losses]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert result.val_loss[-1][1] < result.val_loss[0][1]
    assert (result.export_dir / "config.json").is_file()


def test_speed_switches_auto_resolve_per_device():
    """Unset switches mean auto: all on for CUDA, all off on CPU; explicit values win."""
    auto = SpeedConfig()
    names = ("compile_blocks", "compile_inputs", "compile_loss", "autocast_logits",
             "async_label_check")
    assert all(getattr(auto.resolved("cuda"), n) is True for n in names)
    assert all(getattr(auto.resolved("cpu"), n) is False for n in names)
    mixed = SpeedConfig(compile_loss=False, autocast_logits=True).resolved("cuda")
    assert mixed.compile_loss is False and mixed.autocast_logits is True
    assert SpeedConfig(compile_blocks=True).resolved("cpu").compile_blocks is True
    with pytest.raises(ValueError, match="compile_blocks"):
        SpeedConfig(compile_blocks="yes")  # type: ignore[arg-type]
