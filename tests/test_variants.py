"""hmar_core.variants: variant i of a run with seed s is the run of one sample with seed s + i.

Also the CLI's ``--variants`` (which runs them through the same functions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hmar_core import EditOptions, Pipeline
from hmar_core.cli import main
from hmar_core.editing import edit
from hmar_core.variants import (
    SEED_RANGE,
    VariantSessions,
    edit_variants,
    generate_variants,
    outpaint_variants,
    run_variants,
    variant_seed,
    variant_seeds,
)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.random(seed=0)


def picture() -> np.ndarray:
    return (np.random.RandomState(5).rand(20, 28, 3) * 255).astype(np.uint8)


def test_the_seed_rule_and_its_wrap():
    assert variant_seeds(100, 4) == [100, 101, 102, 103]
    assert variant_seed(SEED_RANGE - 1, 1) == 0  # after the largest seed comes 0
    assert variant_seeds(SEED_RANGE - 2, 3) == [SEED_RANGE - 2, SEED_RANGE - 1, 0]
    for bad in (-1, SEED_RANGE, True, 1.5):
        with pytest.raises(ValueError, match="seed must be an int"):
            variant_seed(bad, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="variant index"):
        variant_seed(1, -1)
    with pytest.raises(ValueError, match="number of variants"):
        variant_seeds(1, 0)


def test_run_variants_draws_one_random_seed_for_the_run():
    seeds = run_variants(None, 3, lambda index, seed: seed)
    assert seeds == variant_seeds(seeds[0], 3)


def test_generate_variants_are_the_single_runs(pipe):
    calls = []
    outputs = generate_variants(pipe, None, seed=40, count=3, steps=1,
                                on_scale=lambda index, state: calls.append(index))
    assert [out.seed for out in outputs] == [40, 41, 42]
    assert calls == [i for i in range(3) for _ in pipe.patch_nums]
    for index, out in enumerate(outputs):
        alone = pipe.generate(None, seed=40 + index, steps=1, batch_size=1)
        assert torch.equal(out.images, alone.images) and torch.equal(out.labels, alone.labels)


def test_edit_and_outpaint_variants_are_the_single_runs(pipe):
    mask = np.zeros((20, 28), bool)
    mask[4:12, 6:20] = True
    options = EditOptions(seed=7, steps=1, num_variants=3, feather=2)
    results = edit_variants(pipe, picture(), mask, options)
    assert [result.seed for result in results] == [7, 8, 9]
    alone = edit(pipe, picture(), mask, EditOptions(seed=9, steps=1, feather=2))
    assert np.array_equal(np.asarray(results[2].image), np.asarray(alone.image))
    wide = outpaint_variants(pipe, picture(), {"right": 10}, EditOptions(seed=3, num_variants=2))
    single = outpaint_variants(pipe, picture(), {"right": 10}, EditOptions(seed=4))
    assert np.array_equal(np.asarray(wide[1].image), np.asarray(single[0].image))
    assert wide[1].image.size == (38, 20)


def test_variant_sessions_resume_every_variant(pipe):
    mask = np.zeros((20, 28), bool)
    mask[2:8, 2:10] = True
    sessions = VariantSessions()
    options = EditOptions(seed=1, steps=1, num_variants=2)
    first = edit_variants(pipe, picture(), mask, options, session=sessions)
    again = edit_variants(pipe, picture(), mask, options, session=sessions)
    assert sessions[0].hits > 0 and sessions[1].hits > 0
    assert all(result.resumed_from >= 0 for result in again)
    for a, b in zip(first, again):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("variants_cli")
    Pipeline.random(seed=0).save_pretrained(folder / "model")
    Image.fromarray(picture()).save(folder / "img.png")
    mask = np.zeros((20, 28), np.uint8)
    mask[4:14, 8:24] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    return folder


@pytest.mark.parametrize("command", [["inpaint", "{img}", "{mask}"],
                                     ["outpaint", "{img}", "--right", "12"],
                                     ["edit", "{img}", "--class", "3"]])
def test_cli_variant_i_is_seed_plus_i_alone(files, command):
    names = {"img": str(files / "img.png"), "mask": str(files / "mask.png")}
    args = [part.format(**names) for part in command]
    args += ["--checkpoint", str(files / "model"), "--steps", "1", "--overwrite"]
    out = files / command[0]
    assert main([*args, "--seed", "20", "--variants", "3", "--out", str(out / "v.png")]) == 0
    assert main([*args, "--seed", "22", "--out", str(out / "alone.png")]) == 0
    with Image.open(out / "v_2.png") as third, Image.open(out / "alone.png") as alone:
        assert np.array_equal(np.asarray(third), np.asarray(alone))
    with Image.open(out / "v_0.png") as first, Image.open(out / "v_1.png") as second:
        assert not np.array_equal(np.asarray(first), np.asarray(second))
