"""Tokenizers and transformers stored as shards (``python -m hmar_core convert`` output) load
in the trainers (issue 17, item 12)."""

from __future__ import annotations

import torch

from hmar_core import Pipeline
from hmar_core.config import TransformerConfig
from train.export import load_tokenizer, load_transformer_weights


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
