"""``init_from`` reads a model folder whose transformer is split into shards (issue 16).

The bundled model (``assets/hmar-emoji64``) stores its transformer as three shards; continuing
its training (``INIT_MODEL=assets/hmar-emoji64 bash scripts/train_demo_gpu.sh``) loads it through
:func:`train.export.load_transformer_weights`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hmar_core import CheckpointError, Pipeline
from train.export import load_transformer_weights


def test_sharded_model_folder_loads_every_tensor(tmp_path: Path) -> None:
    pipe = Pipeline.random(seed=3)
    folder = tmp_path / "model"
    pipe.save_pretrained(folder, max_shard_bytes=64 * 1024)
    shards = sorted(p.name for p in folder.glob("transformer-*-of-*.safetensors"))
    assert len(shards) > 1 and not (folder / "transformer.safetensors").exists()

    state = load_transformer_weights(folder, pipe.transformer.cfg)

    expected = pipe.transformer.state_dict()
    assert sorted(state) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor.float() if tensor.is_floating_point() else tensor)


def test_incomplete_shard_set_is_a_checkpoint_error(tmp_path: Path) -> None:
    pipe = Pipeline.random(seed=3)
    folder = tmp_path / "model"
    pipe.save_pretrained(folder, max_shard_bytes=64 * 1024)
    sorted(folder.glob("transformer-*-of-*.safetensors"))[-1].unlink()

    with pytest.raises(CheckpointError, match="incomplete"):
        load_transformer_weights(folder, pipe.transformer.cfg)
