"""Tokenizers and transformers stored as shards (``python -m hmar_core convert`` output) load
in the trainers (issue 17, item 12)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from PIL import Image
from train_helpers import REPO, hmar_config, subprocess_env

from hmar_core import Pipeline
from hmar_core.config import TransformerConfig
from train.export import load_tokenizer, load_transformer_weights
from train.hmar import main as train_hmar


def _sharded_model(folder):
    pipeline = Pipeline.random("tiny", "tiny", seed=3)
    pipeline.save_pretrained(folder, max_shard_bytes=4096)  # force several shards
    return pipeline


def test_load_tokenizer_reads_a_sharded_folder(tmp_path):
    pipeline = _sharded_model(tmp_path / "model")
    shards = sorted(p.name for p in (tmp_path / "model").glob("tokenizer-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "model" / "tokenizer.safetensors").exists()
    tokenizer = load_tokenizer(tmp_path / "model")
    expected = pipeline.tokenizer.state_dict()
    for key, value in tokenizer.state_dict().items():
        assert torch.equal(value, expected[key].float()), key


def test_load_transformer_weights_reads_a_sharded_folder(tmp_path):
    pipeline = _sharded_model(tmp_path / "model")
    assert len(list((tmp_path / "model").glob("transformer-*.safetensors"))) > 1
    state = load_transformer_weights(tmp_path / "model", TransformerConfig.from_name("tiny"))
    expected = pipeline.transformer.state_dict()
    assert set(state) == set(expected)
    for key, value in state.items():
        assert torch.equal(value, expected[key].float()), key


def test_hmar_trains_on_a_tokenizer_converted_by_the_cli(fixture_dir, tmp_path):
    """``python -m hmar_core convert`` of the official-layout fixture writes a sharded
    tokenizer; ``train.hmar`` takes that folder as its tokenizer."""
    converted = tmp_path / "converted"
    subprocess.run([sys.executable, "-m", "hmar_core", "convert", "--vae",
                    str(fixture_dir / "vqvae.pth"), "--hmar", str(fixture_dir / "hmar.pth"),
                    "--out", str(converted)], cwd=REPO, env=subprocess_env(), check=True,
                   capture_output=True, timeout=300)
    assert len(list(converted.glob("tokenizer-*.safetensors"))) > 1
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / name / f"{i}.png")
    cfg = hmar_config(tmp_path / "data", tmp_path / "out", converted, steps=2, batch_size=2,
                      transformer={"vocab_size": 1024, "latent_channels": 32,
                                   "patch_nums": (1, 2, 3, 4), "num_classes": 2},
                      fields={"token_cache_crops": 0, "val_samples": 2},
                      val_fraction=0.0)
    result = train_hmar(cfg)
    assert result.step == 2 and (result.export_dir / "config.json").is_file()
