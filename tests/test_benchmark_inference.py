"""``benchmarks/inference.py``: the phase breakdown of a public call (issue 15)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from benchmarks.inference import (
    ENGINE_PHASES,
    command_line,
    engine_option,
    engine_phases,
    markdown,
)


def _picture(side: int) -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4: side // 2, side // 4: side // 2] = 255
    return image, Image.fromarray(mask)


def test_phases_of_an_inpaint_count_each_engine_call_and_restore_the_engine(tiny_pipe) -> None:
    image, mask = _picture(tiny_pipe.image_size)
    results = []

    def inpaint(i: int) -> None:
        results.append(np.asarray(tiny_pipe.inpaint(image, mask, seed=i, steps=1)))

    phases = engine_phases(tiny_pipe, inpaint, reps=3, cuda=False)

    assert set(phases) == {*ENGINE_PHASES, "total", "rest"}
    # one inpaint = one encode of the picture, one constrained sampling, one decode
    assert [phases[name]["calls"] for name in ENGINE_PHASES] == [1, 1, 1]
    assert all(phases[name]["ms"] > 0 for name in (*ENGINE_PHASES, "total"))
    assert 0 <= phases["rest"]["ms"] < phases["total"]["ms"]
    assert sum(phases[name]["ms"] for name in ENGINE_PHASES) <= phases["total"]["ms"] * 1.5
    # the engine's own methods are back (nothing left shadowing them on the instance)
    assert not set(ENGINE_PHASES) & set(vars(tiny_pipe.backend))
    # the measured calls were the real ones: seeds 0..2 give the same pictures again
    again = [np.asarray(tiny_pipe.inpaint(image, mask, seed=i, steps=1)) for i in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(results, again))


def test_a_generation_encodes_nothing(tiny_pipe) -> None:
    phases = engine_phases(tiny_pipe, lambda i: tiny_pipe.generate(0, seed=i), reps=1,
                           cuda=False)

    assert phases["encode"]["calls"] == 0 and phases["encode"]["ms"] == 0
    assert phases["sample_tokens"]["calls"] == 1 and phases["decode"]["calls"] == 1


def test_the_markdown_lists_the_phases_of_the_rows_that_have_them() -> None:
    phases = {"encode": {"ms": 1.26, "calls": 1}, "rest": {"ms": 3.0, "calls": 1}}
    report = {"device": "NVIDIA H100", "torch": "2.11", "rows": {
        "inpaint d16 B=1 steps 2": {"ms": 43.4, "phases": phases, "target_ms": 30},
        "generate d16 B=64": {"ms": 235.4, "peak_gib": 3.8, "official_ms": 434}}}

    text = markdown(report)

    assert "- `inpaint d16 B=1 steps 2`: encode 1.3 · rest 3.0" in text
    assert "`generate d16 B=64`:" not in text


def test_the_markdown_marks_each_target_met_or_not_and_the_command_is_the_real_one() -> None:
    report = {"device": "NVIDIA H100", "torch": "2.11", "rows": {
        "inpaint d16 B=1 steps 2": {"ms": 31.5, "target_ms": 30},
        "generate d30 B=64": {"ms": 500.0, "peak_gib": 12.5, "official_ms": 1042,
                              "target_ms": 520, "target_gib": 12.0},
        "inpaint d16 B=1 steps 0": {"ms": 16.5}}}

    lines = markdown(report).splitlines()

    assert "| `inpaint d16 B=1 steps 2` | 31.5 | – | – | ≤ 30 ms ✗ |" in lines
    assert "| `generate d30 B=64` | 500.0 | 12.50 | 1042 | ≤ 520 ms ✓, ≤ 12 GiB ✗ |" in lines
    assert "| `inpaint d16 B=1 steps 0` | 16.5 | – | – |  |" in lines
    assert command_line(["--depths", "16", "30", "--out", "x", "--markdown=B.md", "--reps", "5"]
                        ) == "python -m benchmarks.inference --depths 16 30 --reps 5"


def test_compare_options_parse_as_json_values_or_strings() -> None:
    assert engine_option("vae_graph_batch=0") == ("vae_graph_batch", 0)
    assert engine_option("cuda_graphs=false") == ("cuda_graphs", False)
    assert engine_option("decode_batch=8") == ("decode_batch", 8)
    assert engine_option("name=abc") == ("name", "abc")
    for bad in ("=3", "vae_graph_batch", "a b=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            engine_option(bad)


def test_dry_run_compare_times_generation_and_inpaint_again_on_the_other_options() -> None:
    """``--compare`` (toy sizes on the CPU): every fast row has its twin on each set of other
    engine options, timed through the public API (and without a peak: two engines are alive)."""
    from benchmarks.inference import run_gpu

    args = argparse.Namespace(dry_run=True, depths=[2], engines=["fast"], reps=1, edit_reps=1,
                              compare=[{"vae_graph_batch": 0}, {"fp8": True}], engine_option={})
    rows = run_gpu(args)["rows"]

    plain = ["generate d2 B=2", "inpaint d2 B=1 steps 2", "inpaint d2 B=1 steps 0"]
    for name in plain:
        for options in ("vae_graph_batch=0", "fp8=True"):
            twin = rows[f"{name} [{options}]"]
            assert "error" not in rows[name] and "error" not in twin, (rows[name], twin)
            assert twin["ms"] > 0
    assert "peak_gib" not in rows["generate d2 B=2 [vae_graph_batch=0]"]


def test_dry_run_engine_option_builds_the_timed_engine_with_it(monkeypatch) -> None:
    """``--engine-option``: the rows' own engine (the one whose peak is recorded) has it."""
    import benchmarks.inference as inference

    built = []
    real_build = inference.build

    def spy(*args: object, **kwargs: object) -> object:
        pipe = real_build(*args, **kwargs)
        built.append(pipe)
        return pipe

    monkeypatch.setattr(inference, "build", spy)
    args = argparse.Namespace(dry_run=True, depths=[2], engines=["fast"], reps=1, edit_reps=1,
                              compare=[], engine_option={"fp8": True, "fp8_min_rows": 0})
    rows = inference.run_gpu(args)["rows"]
    assert "error" not in rows["generate d2 B=2"]
    runner = built[0].backend.runner
    assert runner.fp8_dtype is not None and runner.fp8_min_rows == 0
