"""``benchmarks/cfg_sweep.py`` end to end on a tiny model, classifier and dataset (CPU)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch

from benchmarks.cfg_sweep import main as sweep_main
from benchmarks.cfg_sweep import markdown
from benchmarks.classifier import ClassifierConfig, EmojiClassifier, save_classifier


def _tiny_data(path, num_classes: int) -> None:
    rng = np.random.default_rng(0)
    count = 48
    labels = np.arange(count) % 4  # four classes with images
    np.savez(path, images=(rng.random((count, 64, 64, 3)) * 255).astype(np.uint8),
             labels=labels, splits=np.arange(count) % 2, split_names=np.array(["train", "val"]),
             class_names=np.array([f"c{i}" for i in range(num_classes)]))


def test_sweep_reports_fd_and_pairs_every_row_with_the_model_s_own_sampler(tmp_path):
    from hmar_core import Pipeline, TransformerConfig

    # the domain classifier's 51 classes (3 styles x 17 categories)
    transformer_cfg = dataclasses.replace(TransformerConfig.from_name("tiny"), num_classes=51)
    tiny_pipe = Pipeline.random(transformer_cfg=transformer_cfg, seed=0)
    folder = tmp_path / "model"
    tiny_pipe.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = ClassifierConfig(num_classes=tiny_pipe.num_classes, channels=(8, 8, 16, 16),
                           class_names=[f"c{i}" for i in range(tiny_pipe.num_classes)])
    save_classifier(EmojiClassifier(cfg).eval(), tmp_path / "clf")
    _tiny_data(tmp_path / "data.npz", tiny_pipe.num_classes)
    own = tiny_pipe.sampler_config
    out = tmp_path / "sweep.json"
    assert sweep_main(["--model", str(folder), "--classifier", str(tmp_path / "clf"),
                       "--data", str(tmp_path / "data.npz"), "--cfg", "0", "--top-k", "5",
                       "--steps", "0", "--samples", "8", "--batch-size", "4",
                       "--bootstrap-reps", "20",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    grid = {(row["cfg"], row["top_k"], row["top_p"]) for row in rows}
    assert grid == {(c, k, own.top_p) for c in (own.cfg, 0.0) for k in (own.top_k, 5)}
    assert [row["model_own"] for row in rows].count(True) == 1
    for row in rows:
        assert np.isfinite(row["fd"]) and row["fd"] >= 0 and row["fd_std"] >= 0
        paired = row["fd_vs_own"]
        if row["model_own"]:  # against itself: no difference in any resample
            assert paired["diff_mean"] == 0 and paired["fraction_on_better"] == 0
        assert 0 <= paired["fraction_on_better"] <= 1
    # a different sampler really gives different images (different FD)
    assert len({round(row["fd"], 9) for row in rows}) > 1
    table = markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "(own)" in table


def test_a_model_with_finer_classes_is_scored_in_the_data_s_classes(tmp_path):
    """A model whose classes are split copies of the data's (``train.split_classes``) makes the
    same images for a child as for its parent, so its sweep equals the coarse model's."""
    from hmar_core import Pipeline, TransformerConfig
    from train.split_classes import split_class_table

    names = [f"s/c{i}" for i in range(51)]
    transformer_cfg = dataclasses.replace(TransformerConfig.from_name("tiny"), num_classes=51)
    coarse = Pipeline.random(transformer_cfg=transformer_cfg, seed=0)
    coarse = Pipeline(coarse.tokenizer, coarse.transformer, coarse.sampler_config, names)
    parents = [i // 2 for i in range(102)]  # two children per class
    fine_names = [f"{names[p]}/x{i % 2}" for i, p in enumerate(parents)]
    fine = Pipeline(coarse.tokenizer, split_class_table(coarse.transformer, parents),
                    coarse.sampler_config, fine_names)
    coarse.save_pretrained(tmp_path / "coarse")
    fine.save_pretrained(tmp_path / "fine")
    torch.manual_seed(0)
    clf = ClassifierConfig(num_classes=51, channels=(8, 8, 16, 16), class_names=names)
    save_classifier(EmojiClassifier(clf).eval(), tmp_path / "clf")
    _tiny_data(tmp_path / "plain.npz", 51)
    with np.load(tmp_path / "plain.npz") as data:
        arrays = dict(data)
    np.savez(tmp_path / "data.npz", **{**arrays, "class_names": np.array(names)})
    # the data relabelled: child 0 of each class
    np.savez(tmp_path / "fine.npz", **{**arrays, "labels": arrays["labels"] * 2,
                                       "class_names": np.array(fine_names)})
    common = ["--classifier", str(tmp_path / "clf"), "--data", str(tmp_path / "data.npz"),
              "--steps", "0", "--samples", "8", "--batch-size", "4", "--bootstrap-reps", "5"]
    assert sweep_main(["--model", str(tmp_path / "coarse"), *common,
                       "--json", str(tmp_path / "coarse.json")]) == 0
    assert sweep_main(["--model", str(tmp_path / "fine"), *common, "--label-data",
                       str(tmp_path / "fine.npz"), "--json", str(tmp_path / "fine.json")]) == 0
    rows = [json.loads((tmp_path / f"{name}.json").read_text())["rows"]
            for name in ("coarse", "fine")]
    assert [(r["fd"], r["class_top1_balanced"]) for r in rows[0]] == \
        [(r["fd"], r["class_top1_balanced"]) for r in rows[1]]
