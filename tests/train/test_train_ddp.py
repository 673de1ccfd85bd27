"""DDP: 2 processes (torchrun, gloo on CPU) end where 1 process ends on the same global batch.

Both runs go through the command line (YAML config) for the 2-process side and ``main`` for
the 1-process side. Stochastic depth is switched off (its draws are per rank by design).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import REPO, hmar_config, subprocess_env, tokenizer_config

from train.config import OptimConfig
from train.hmar import main as train_hmar
from train.tokenizer import main as train_tokenizer

# Adam turns float-rounding differences of near-zero gradients into steps of up to ~lr, so the
# runs use a small lr (2e-4) and the tolerance is a small fraction of it.
ATOL, RTOL = 2e-5, 1e-4


def _torchrun(module: str, config: Path, out: Path) -> None:
    env = subprocess_env()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", module, "--config", str(config),
               "--device", "cpu"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "train.log").is_file()


def _final_model(out: Path, step: int) -> dict[str, torch.Tensor]:
    path = out / "checkpoints" / f"ckpt-{step:08d}.pt"
    return torch.load(path, weights_only=True)["model"]


def _assert_close(single: dict, double: dict) -> None:
    assert set(single) == set(double)
    worst = max(float((single[k].float() - double[k].float()).abs().max()) for k in single)
    for key in single:
        torch.testing.assert_close(double[key], single[key], atol=ATOL, rtol=RTOL,
                                   msg=lambda m, k=key: f"{k}: {m}")
    print(f"max |difference| 1 vs 2 processes: {worst:.2e}")


def _write_config(cfg, model_key: str, model_dict: dict, path: Path) -> None:
    data = dataclasses.asdict(cfg)
    data[model_key] = model_dict
    path.write_text(json.dumps(data))


@pytest.mark.timeout(400)
def test_hmar_ddp_matches_single_process(image_root, tokenizer_run, tmp_path):
    cfg = hmar_config(image_root, tmp_path / "single", tokenizer_run.export_dir, stage="joint",
                      steps=4, batch_size=8, log_interval=2, ema_decay=0.9,
                      transformer={"drop_path_rate": 0.0},
                      fields={"val_samples": 8, "token_cache_crops": 1,
                              "optim": OptimConfig(lr=2e-4)})
    train_hmar(cfg)
    double = tmp_path / "double"
    ddp_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(double)))
    _write_config(ddp_cfg, "transformer", cfg.transformer.to_dict(), tmp_path / "hmar.yaml")
    _torchrun("train.hmar", tmp_path / "hmar.yaml", double)
    _assert_close(_final_model(tmp_path / "single", 4), _final_model(double, 4))
    assert (double / "model" / "transformer.safetensors").is_file()


@pytest.mark.timeout(400)
def test_tokenizer_ddp_matches_single_process(image_root, tmp_path):
    cfg = tokenizer_config(image_root, tmp_path / "single", steps=4, batch_size=8,
                           log_interval=2)
    cfg = dataclasses.replace(cfg, restart_interval=2, val_samples=8,
                              optim=dataclasses.replace(cfg.optim, lr=2e-4))
    train_tokenizer(cfg)
    double = tmp_path / "double"
    ddp_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(double)))
    _write_config(ddp_cfg, "tokenizer", cfg.tokenizer.to_dict(), tmp_path / "tok.yaml")
    _torchrun("train.tokenizer", tmp_path / "tok.yaml", double)
    _assert_close(_final_model(tmp_path / "single", 4), _final_model(double, 4))
