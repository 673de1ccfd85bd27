"""The speed/quality curve of ``benchmarks/quality.py`` and the class edits against strength of
``benchmarks/editing_quality.py`` (issue 16)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.editing_quality import class_edits
from benchmarks.quality import curve_report, curve_settings, load_pipe

# the speed/quality curve of the bundled model, measured with its shipped sampler
BUNDLED_CURVE = "benchmarks/models/quality_hmar-emoji64-v3_curve_h100.json"


def _entry(fd: float, seconds: float) -> dict[str, Any]:
    mem = {"ratio_balanced_mean": 1.1, "generated": {"identical": 0}}
    return {"fd_val": fd, "accuracy_ratio": 0.9, "category_ratio": 0.95,
            "memorisation_pixels32": mem, "seconds_per_image": seconds}


def test_curve_settings_are_sorted_distinct_and_count_extra_passes(tiny_pipe) -> None:
    settings = curve_settings(tiny_pipe, [4, 0, 2, 2])

    assert [s.name for s in settings] == ["steps_0", "steps_2", "steps_4"]
    assert [s.steps for s in settings] == [0, 2, 4]
    assert settings[0].description.endswith("extra passes 0")
    extra = [int(s.description.rsplit(" ", 1)[1]) for s in settings]
    assert extra[0] < extra[1] < extra[2]
    with pytest.raises(ValueError, match="--curve steps must be >= 0"):
        curve_settings(tiny_pipe, [-1])


def test_curve_report_bootstraps_each_step_against_zero_and_the_previous() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 40)
    ref = rng.normal(size=(200, 3))
    ref_labels = np.repeat(np.arange(4), 50)
    close = rng.normal(size=(160, 3))  # drawn like the reference
    feats = {"steps_0": close + 2.0, "steps_1": close, "steps_2": close + 3.0}
    report = {"generated": {"steps_0": _entry(9.0, 0.01), "steps_1": _entry(1.0, 0.02),
                            "steps_2": _entry(12.0, 0.03)}}

    curve = curve_report(report, [2, 0, 1], feats, labels, ref, ref_labels, reps=20, seed=0)

    assert [row["steps"] for row in curve["rows"]] == [0, 1, 2]
    assert [row["fd_val"] for row in curve["rows"]] == [9.0, 1.0, 12.0]
    assert set(curve["vs_steps0"]) == {"1_vs_0", "2_vs_0"}
    assert set(curve["vs_previous"]) == {"1_vs_0", "2_vs_1"}
    assert curve["vs_steps0"]["1_vs_0"]["verdict"] == "steps=1 better"
    assert curve["vs_steps0"]["2_vs_0"]["verdict"] == "steps=0 better"
    assert curve["vs_previous"]["2_vs_1"]["verdict"] == "steps=1 better"
    assert curve["vs_previous"]["2_vs_1"]["diff_mean"] > 0  # FD rose from 1 to 2 steps


def test_load_pipe_overrides_the_mask_step_guidance(tmp_path, tiny_pipe) -> None:
    tiny_pipe.save_pretrained(tmp_path / "model")

    assert load_pipe(tmp_path / "model", None, 0.5).sampler_config.mask_cfg_ratio == 0.5
    kept = load_pipe(tmp_path / "model", None, None).sampler_config.mask_cfg_ratio
    assert kept == tiny_pipe.sampler_config.mask_cfg_ratio


def test_class_edits_use_the_same_targets_at_every_strength(tiny_pipe) -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    labels = [0, 1, 2, 3]

    def always_class_zero(batch: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(batch.shape[0], tiny_pipe.num_classes)
        logits[:, 0] = 1.0
        return logits

    rows = [class_edits(tiny_pipe, always_class_zero, images, labels, strength, seed=0,
                        steps=0, device=torch.device("cpu")) for strength in (1, 2)]

    assert [r["strength"] for r in rows] == [1, 2] and [r["edits"] for r in rows] == [4, 4]
    # the classifier always says class 0: success = share of targets that are 0, the same
    # targets at every strength
    assert rows[0]["success"] == rows[1]["success"]
    targets_rng = np.random.default_rng(1)
    expected = sum(int(targets_rng.choice([c for c in range(tiny_pipe.num_classes) if c != y]))
                   == 0 for y in labels) / 4
    assert rows[0]["success"] == expected


def test_sample_grids_one_column_per_category_without_empty_classes(tmp_path) -> None:
    from benchmarks.sample_grids import grid, style_classes

    names = ["a/x", "a/y", "b/x", "b/y"]
    assert style_classes(names, [1]) == {"a": [0], "b": [2, 3]}
    with pytest.raises(ValueError, match="not style/category"):
        style_classes(["plain"], [])
    images = torch.rand(6, 3, 4, 4)
    picture = grid(images, 3)
    assert picture.size == (12, 8)
    pixels = np.asarray(picture)
    expected = (images[4].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(pixels[4:8, 4:8], expected)  # row 1, column 1


def test_bundled_default_steps_is_not_dominated_on_its_measured_curve() -> None:
    """The bundled model's default ``steps`` comes from its measured speed/quality curve: no
    other measured ``steps`` is at least as good on FD, class accuracy and cost at once."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    config = json.loads((root / "assets/hmar-emoji64/config.json").read_text())
    report = json.loads((root / BUNDLED_CURVE).read_text())
    # the curve was measured with the sampler the model ships (guidance, mask-step guidance,
    # the scales the knob refines), only the steps varied; the class-edit defaults do not
    # enter generation
    ignored = {"steps", "class_strength", "class_revise"}
    shipped = {k: v for k, v in config["sampler"].items() if k not in ignored}
    measured = {k: v for k, v in report["sampler"].items() if k not in ignored}
    assert measured == shipped, f"{BUNDLED_CURVE} was measured with another sampler"
    rows = {row["steps"]: row for row in report["curve"]["rows"]}
    default = config["sampler"]["steps"]
    assert default in rows, f"default steps {default} was not measured"
    mine = rows[default]
    for steps, row in rows.items():
        dominates = (steps <= default and row["fd_val"] <= mine["fd_val"]
                     and row["accuracy_ratio"] >= mine["accuracy_ratio"] and steps != default)
        assert not dominates, f"steps={steps} is as fast, as good on FD and accuracy as {default}"


def test_class_edits_use_the_guidance_they_are_given(tiny_pipe) -> None:
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    labels = [0, 1, 2, 3]
    # a classifier that reads the picture: its class is the bucket of the mean brightness,
    # so the predictions change when the edited pictures do
    def brightness(batch: torch.Tensor) -> torch.Tensor:
        return (batch.mean(dim=(1, 2, 3)) * 1000).long() % tiny_pipe.num_classes

    def run(cfg: float | None) -> list[int]:
        return class_edits(tiny_pipe, brightness, images, labels, 1, seed=0, steps=0,
                           device=torch.device("cpu"), cfg=cfg)["predicted"]

    model_cfg = tiny_pipe.sampler_config.cfg
    assert run(None) == run(model_cfg)
    assert run(0.0) != run(model_cfg + 8.0)


def test_editing_benchmark_edits_at_the_model_s_class_edit_defaults(tiny_pipe, tmp_path) -> None:
    """``benchmarks/editing_quality.py`` measures what a user gets: without ``--revise`` the
    class edits use the model's own default (``off`` and numbers still override it)."""
    import dataclasses

    from benchmarks.editing_quality import main as editing_main
    from hmar_core import Pipeline

    sampler = dataclasses.replace(tiny_pipe.sampler_config, class_strength=1, class_revise=-1.5)
    folder = tmp_path / "model"
    Pipeline(tiny_pipe.tokenizer, tiny_pipe.transformer, sampler,
             tiny_pipe.class_names).save_pretrained(folder)
    common = ["--model", str(folder), "--num", "2", "--modes", "inpaint"]
    for extra, want in (([], -1.5), (["--revise", "off"], None), (["--revise", "-3"], -3.0)):
        out = tmp_path / "report.json"
        assert editing_main([*common, *extra, "--out", str(out)]) == 0
        assert json.loads(out.read_text())["revise"] == want
