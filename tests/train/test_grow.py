"""Growing a trained model deeper with identity blocks (:mod:`train.grow`, issue 16).

The grown model must compute what the old one computed (teacher-forced logits of both
branches, whole generations through a saved folder), keep every old weight at its new index,
give its new blocks closed gates but trainable weights (the gates get gradients), and refuse
positions that do not exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from small_transformer import small_transformer

from hmar_core import Pipeline
from train.cli import parse_hmar_args
from train.export import load_transformer_weights
from train.grow import cli, grow_transformer


def _inputs(model: torch.nn.Module, seed: int = 1):
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    x_ns = torch.randn(2, cfg.seq_len - 1, cfg.latent_channels, generator=gen)
    x_mask = torch.randn(x_ns.shape, generator=gen)
    masked = torch.rand(x_ns.shape[:2], generator=gen) < 0.4
    return torch.tensor([3, cfg.num_classes]), x_ns, x_mask, masked


@pytest.mark.parametrize("kind", ["hmar", "var"])
def test_grown_model_computes_the_same_logits(kind):
    model = small_transformer(kind)  # 3 blocks: hmar 2 base + 1 per branch, var 3 base
    base = len(model.base_blocks)
    grown = grow_transformer(model, [0, base + 1], seed=5)
    assert grown.cfg.depth == model.cfg.depth + 2 and len(grown.base_blocks) == base + 2
    labels, x_ns, x_mask, masked = _inputs(model)
    with torch.no_grad():
        assert torch.allclose(grown(labels, x_ns), model(labels, x_ns), atol=1e-6, rtol=0)
        if kind == "hmar":
            assert torch.allclose(grown(labels, x_ns, x_mask, masked),
                                  model(labels, x_ns, x_mask, masked), atol=1e-6, rtol=0)


def test_old_weights_move_to_their_new_indices_and_new_gates_are_closed():
    model = small_transformer("hmar")
    grown = grow_transformer(model, [1], seed=0)  # old 0 -> 0, new 1, old 1 -> 2
    width = model.cfg.width
    old, new = model.state_dict(), grown.state_dict()
    for key, value in old.items():
        if key.startswith("base_blocks.1."):
            key = key.replace("base_blocks.1.", "base_blocks.2.", 1)
        assert torch.equal(new[key], value), key
    ada_w, ada_b = new["base_blocks.1.ada_lin.weight"], new["base_blocks.1.ada_lin.bias"]
    assert not ada_w[: 2 * width].any() and not ada_b[: 2 * width].any()  # gamma1, gamma2
    assert ada_w[2 * width:].abs().sum() > 0  # scale and shift rows keep their init
    for name in ("attn.qkv.weight", "attn.proj.weight", "ffn.fc1.weight", "ffn.fc2.weight"):
        assert new[f"base_blocks.1.{name}"].abs().sum() > 0, name


def test_the_new_gates_get_gradients():
    model = small_transformer("hmar")
    grown = grow_transformer(model, [1], seed=0).train()
    labels, x_ns, _, _ = _inputs(model)
    grown(labels, x_ns).logsumexp(-1).mean().backward()
    gate = grown.base_blocks[1].ada_lin.weight.grad[: 2 * model.cfg.width]
    assert gate.abs().sum() > 0


@pytest.mark.parametrize("insert, match", [
    ([], "at least one"),
    ([1, 1], "differ"),
    ([-1], r"\[0, 2\]"),
    ([3], r"\[0, 2\]"),  # 2 base blocks + 1 new: indices 0..2
])
def test_bad_positions_are_refused(insert, match):
    with pytest.raises(ValueError, match=match):
        grow_transformer(small_transformer("hmar"), insert)


def test_grown_folder_generates_the_same_images(tmp_path: Path):
    pipe = Pipeline.random(seed=2)
    pipe.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["class_titles"] = [f"title {i}" for i in range(pipe.transformer.cfg.num_classes)]
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    assert cli(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "grown"),
                "--insert", "0", "2"]) == 0
    grown = Pipeline.from_pretrained(tmp_path / "grown", device="cpu")
    assert grown.transformer.cfg.depth == pipe.transformer.cfg.depth + 2
    saved = json.loads((tmp_path / "grown" / "config.json").read_text())
    assert saved["class_titles"] == config["class_titles"]  # the source's other entries
    source = Pipeline.from_pretrained(tmp_path / "model", device="cpu")  # the same engine
    want, got = source.generate([1, 4], seed=3, steps=1), grown.generate([1, 4], seed=3, steps=1)
    assert all(torch.equal(a, b) for a, b in zip(want.tokens, got.tokens))
    assert torch.equal(torch.as_tensor(want.images), torch.as_tensor(got.images))


def test_cli_reports_bad_positions(tmp_path: Path, capsys):
    Pipeline.random(seed=2).save_pretrained(tmp_path / "model")
    with pytest.raises(SystemExit):
        cli(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "g"), "--insert", "99"])
    assert "insert positions" in capsys.readouterr().err


def test_printed_overrides_let_the_training_config_load_the_grown_model(tmp_path: Path, capsys):
    """The demo script's path: grow, then train.hmar with the YAML of the old model plus the
    printed flags must accept the grown folder as ``--init-from``."""
    pipe = Pipeline.random(seed=1)  # the "tiny" presets
    cfg = pipe.transformer.cfg
    pipe.save_pretrained(tmp_path / "model")
    assert cli(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "grown"),
                "--insert", "1"]) == 0
    flags = capsys.readouterr().out.split()
    assert flags[:2] == ["--set", f"transformer.depth={cfg.depth + 1}"]
    config = tmp_path / "train.yaml"
    config.write_text("transformer:\n  preset: tiny\n")  # a YAML that describes the old model
    train_cfg = parse_hmar_args(["--config", str(config), "--data", str(tmp_path),
                                 "--tokenizer", str(tmp_path / "grown"),
                                 "--init-from", str(tmp_path / "grown"), *flags])
    state = load_transformer_weights(train_cfg.init_from, train_cfg.transformer)
    assert train_cfg.transformer.depth == cfg.depth + 1
    assert sum(key.endswith("ada_lin.weight") and key.startswith("base_blocks.")
               for key in state) == len(pipe.transformer.base_blocks) + 1
