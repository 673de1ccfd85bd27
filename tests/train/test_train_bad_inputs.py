"""Bad inputs give clear errors before any training step (or are skipped and counted)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from train_helpers import hmar_config, tokenizer_config

from hmar_core import CheckpointError
from hmar_core.config import TransformerConfig
from train.batches import open_datasets
from train.config import HMARTrainConfig, RunConfig
from train.distributed import DistContext
from train.hmar import main as train_hmar
from train.tokenizer import main as train_tokenizer


def _copy_train(image_root: Path, dest: Path) -> Path:
    shutil.copytree(image_root / "train", dest)
    return dest


def test_corrupt_images_are_skipped_and_counted(image_root, tmp_path):
    root = _copy_train(image_root, tmp_path / "data")
    first_class = sorted(p for p in root.iterdir())[0]
    (first_class / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    splits = open_datasets(RunConfig(data_path=str(root)), 16)
    assert len(splits.train.dataset.skipped) == 1
    assert len(splits.train) + len(splits.val) == 240


def test_empty_class_folder_is_an_error_unless_allowed(image_root, tmp_path):
    root = _copy_train(image_root, tmp_path / "data")
    (root / "zz_empty").mkdir()
    with pytest.raises(ValueError, match="zz_empty.*allow_empty_classes"):
        open_datasets(RunConfig(data_path=str(root)), 16)
    splits = open_datasets(RunConfig(data_path=str(root), allow_empty_classes=True), 16)
    assert splits.num_classes == 5


def test_empty_dataset(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
    with pytest.raises(ValueError, match="no readable images"):
        open_datasets(RunConfig(data_path=str(tmp_path / "data")), 16)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_datasets(RunConfig(data_path=str(tmp_path / "missing")), 16)


def test_tokenizer_image_size_mismatch(image_root, tmp_path):
    cfg = tokenizer_config(image_root, tmp_path / "out", image_size=32)
    with pytest.raises(ValueError, match="image_size 32 does not fit the tokenizer.*16"):
        train_tokenizer(cfg)
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_hmar_config_that_does_not_fit(image_root, tokenizer_run, tmp_path):
    cfg = hmar_config(image_root, tmp_path / "out", tokenizer_run.export_dir,
                      transformer={"vocab_size": 128, "num_classes": 7}, image_size=32)
    with pytest.raises(ValueError) as info:
        train_hmar(cfg)
    message = str(info.value)
    assert "vocab_size 128" in message and "64" in message
    assert "num_classes 7" in message and "4 classes" in message
    assert "image_size 32" in message
    assert not (tmp_path / "out" / "checkpoints").exists()
    pyramid = hmar_config(image_root, tmp_path / "out", tokenizer_run.export_dir,
                          transformer={"patch_nums": (1, 2, 4)})
    with pytest.raises(ValueError, match="patch_nums"):
        train_hmar(pyramid)


def test_missing_tokenizer_and_init(image_root, tokenizer_run, tmp_path):
    cfg = hmar_config(image_root, tmp_path / "out", tmp_path / "no-tokenizer")
    with pytest.raises(CheckpointError, match="not a tokenizer folder"):
        train_hmar(cfg)
    cfg = hmar_config(image_root, tmp_path / "out", tokenizer_run.export_dir, stage="stage2",
                      init_from=tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="does not exist"):
        train_hmar(cfg)
    with pytest.raises(ValueError, match="stage2 needs init_from"):
        HMARTrainConfig(run=RunConfig(data_path="x"), tokenizer_path="t", stage="stage2")
    with pytest.raises(ValueError, match="needs an HMAR transformer"):
        HMARTrainConfig(run=RunConfig(data_path="x"), tokenizer_path="t", stage="joint",
                        transformer=TransformerConfig.from_name("var-d16"))


def test_resume_with_another_architecture_is_refused(image_root, tokenizer_run, tmp_path):
    cfg = hmar_config(image_root, tmp_path / "out", tokenizer_run.export_dir, steps=2,
                      fields={"val_samples": 4})
    train_hmar(cfg)
    other = hmar_config(image_root, tmp_path / "out", tokenizer_run.export_dir, steps=2,
                        transformer={"depth": 3}, resume=True)
    with pytest.raises(ValueError, match="cannot resume"):
        train_hmar(other)


def test_batch_must_split_over_processes():
    with pytest.raises(ValueError, match="not divisible by 2 processes"):
        DistContext(rank=0, world_size=2).local_slice(33)


def test_bad_run_values():
    with pytest.raises(ValueError, match="data_path is required"):
        RunConfig()
    with pytest.raises(ValueError, match="precision"):
        RunConfig(data_path="x", precision="fp8")
    with pytest.raises(ValueError, match="stage must be"):
        dataclasses.replace(HMARTrainConfig(run=RunConfig(data_path="x"), tokenizer_path="t"),
                            stage="stage3")
