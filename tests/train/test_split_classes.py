"""A model with finer classes that starts as the trained one (:mod:`train.split_classes`,
issue 16): each fine class computes what its parent computed, and bad inputs are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hmar_core import Pipeline
from train.split_classes import cli, split_class_table

NAMES = ["s/face", "s/object", "t/face"]


def _model(tmp_path):
    pipe = Pipeline.random(seed=1)
    pipe = Pipeline(pipe.tokenizer, pipe.transformer, pipe.sampler_config,
                    [*NAMES, *[f"u/c{i}" for i in range(pipe.num_classes - 3)]])
    pipe.save_pretrained(tmp_path / "model")
    return pipe


def _fine_npz(path, names, parents):
    np.savez(path, class_names=np.array(names), class_parents=np.array(parents, np.int16))
    return path


def test_each_fine_class_starts_as_its_parent(tmp_path, capsys):
    _model(tmp_path)
    pipe = Pipeline.from_pretrained(tmp_path / "model")
    data = _fine_npz(tmp_path / "fine.npz", ["s/face/smile", "s/face/other", "t/face/cry"],
                     [0, 0, 2])
    assert cli(["--model", str(tmp_path / "model"), "--data", str(data),
                "--out", str(tmp_path / "fine")]) == 0
    assert capsys.readouterr().out.strip() == "--set transformer.num_classes=3"

    fine = Pipeline.from_pretrained(tmp_path / "fine")
    assert fine.num_classes == 3 and fine.class_names[2] == "t/face/cry"
    assert json.loads((tmp_path / "fine" / "config.json").read_text())["sampler"] == \
        json.loads((tmp_path / "model" / "config.json").read_text())["sampler"]
    old = pipe.generate([0, 0, 2], seed=4, steps=1)
    new = fine.generate([0, 1, 2], seed=4, steps=1)
    assert all(torch.equal(a, b) for a, b in zip(old.tokens, new.tokens))
    torch.testing.assert_close(new.images, old.images, rtol=0, atol=0)
    # the null class keeps its row: unconditional generation is unchanged too
    table = fine.transformer.class_embed.weight
    assert torch.equal(table[3], pipe.transformer.class_embed.weight[pipe.num_classes])


def test_split_class_table_refusals():
    transformer = Pipeline.random(seed=0).transformer
    with pytest.raises(ValueError, match="at least one class"):
        split_class_table(transformer, [])
    with pytest.raises(ValueError, match="parents must be class ids"):
        split_class_table(transformer, [0, transformer.cfg.num_classes])


def test_folder_refuses_data_whose_parents_are_other_classes(tmp_path):
    _model(tmp_path)
    wrong = _fine_npz(tmp_path / "wrong.npz", ["s/face/smile", "s/object/pen"], [0, 2])
    with pytest.raises(SystemExit):
        cli(["--model", str(tmp_path / "model"), "--data", str(wrong),
             "--out", str(tmp_path / "x")])
    np.savez(tmp_path / "coarse.npz", class_names=np.array(NAMES))
    with pytest.raises(SystemExit):
        cli(["--model", str(tmp_path / "model"), "--data", str(tmp_path / "coarse.npz"),
             "--out", str(tmp_path / "y")])
