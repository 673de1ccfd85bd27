"""Class edits that revise the kept coarse tokens the target class disfavours
(``EditOptions.revise``, :mod:`hmar_core.editing.revise`), on the tiny random pipeline."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from nudged import nudged
from PIL import Image

from hmar_core import EditOptions, EditSpec, Pipeline, pyramid
from hmar_core.cli import main
from hmar_core.editing.revise import coarse_support, revise_coarse
from hmar_core.images import to_model_images


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return nudged(Pipeline.random(seed=0))


def _image(side: int = 16) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side]
    return np.stack([x * 15, y * 15, (x + y) * 7], -1).astype(np.uint8)


def _spec(pipe: Pipeline, strength: int, region_seed: int | None = None) -> EditSpec:
    """A class-4 spec of two pictures; the region is everything, or random cells."""
    images = to_model_images([_image(), _image()[::-1].copy()], pipe.device, pipe.dtype)
    source = pipe.backend.encode(images)
    if region_seed is None:
        regenerate = [torch.ones_like(t, dtype=torch.bool) for t in source]
    else:
        gen = torch.Generator().manual_seed(region_seed)
        regenerate = [torch.rand(t.shape, generator=gen) < 0.6 for t in source]
    return EditSpec(tuple(source), tuple(regenerate), torch.tensor([4, 9]), strength)


def test_support_is_the_teacher_forced_log_ratio(pipe):
    spec = _spec(pipe, strength=3)
    support = coarse_support(pipe, spec, 3)
    quantize = pipe.tokenizer.quantize
    x_ns = pyramid.teacher_forcing_input(list(spec.source_tokens), quantize.codebook,
                                         quantize.phis(), pipe.patch_nums)
    null = torch.full((2,), pipe.null_class)
    with torch.no_grad():
        target = pipe.transformer(spec.labels, x_ns).double().log_softmax(-1)
        uncond = pipe.transformer(null, x_ns).double().log_softmax(-1)
    slices = pyramid.scale_slices(pipe.patch_nums)
    assert len(support) == 3
    for si, got in enumerate(support):
        ids = spec.source_tokens[si][..., None]
        want = (target[:, slices[si]].gather(-1, ids) - uncond[:, slices[si]].gather(-1, ids))
        assert got.shape == spec.source_tokens[si].shape
        torch.testing.assert_close(got.double(), want[..., 0], rtol=1e-4, atol=1e-4)
    assert any(bool((s < 0).any()) and bool((s > 0).any()) for s in support)  # not degenerate


@pytest.mark.parametrize("tau", [-0.05, 0.0, 0.05])
def test_revise_regenerates_the_disfavoured_coarse_tokens_inside_the_region(pipe, tau):
    spec = _spec(pipe, strength=3, region_seed=1)
    support = coarse_support(pipe, spec, 3)
    revised = revise_coarse(pipe, spec, tau)
    assert revised.strength == 0
    for si, regen in enumerate(revised.regenerate):
        if si < 3:
            assert torch.equal(regen, spec.regenerate[si] & (support[si] < tau))
        else:
            assert torch.equal(regen, spec.regenerate[si])
    assert revise_coarse(pipe, _spec(pipe, strength=0), tau).strength == 0  # nothing kept


def _tokens(result: object) -> list[torch.Tensor]:
    return list(result.tokens)  # type: ignore[attr-defined]


def test_public_edit_extremes(pipe):
    """``revise`` very low keeps the coarse scales whole (the strength edit itself); very high
    regenerates all of them (the strength-0 edit); in between the keep masks say which."""
    image = _image()
    kept = pipe.edit(image, None, EditOptions(class_id=4, seed=3, strength=2))
    low = pipe.edit(image, None, EditOptions(class_id=4, seed=3, strength=2, revise=-1e9))
    high = pipe.edit(image, None, EditOptions(class_id=4, seed=3, strength=2, revise=1e9))
    free = pipe.edit(image, None, EditOptions(class_id=4, seed=3, strength=0))
    assert all(torch.equal(a, b) for a, b in zip(_tokens(kept), _tokens(low)))
    assert all(torch.equal(a, b) for a, b in zip(_tokens(free), _tokens(high)))
    assert np.array_equal(np.asarray(kept.images[0]), np.asarray(low.images[0]))
    assert bool(high.keep_masks[0].any()) is False and bool(kept.keep_masks[1].all())
    middle = pipe.edit(image, None, EditOptions(class_id=4, seed=3, strength=2, revise=0.0))
    images = to_model_images([image], pipe.device, pipe.dtype)
    spec = EditSpec(tuple(pipe.backend.encode(images)),
                    tuple(torch.ones_like(t, dtype=torch.bool) for t in middle.source_tokens),
                    torch.tensor([4]), 2)
    support = coarse_support(pipe, spec, 2)
    for si in range(2):
        assert torch.equal(middle.keep_masks[si], support[si] >= 0.0)
        kept_here = middle.keep_masks[si]
        assert torch.equal(middle.tokens[si][kept_here], middle.source_tokens[si][kept_here])


def test_engines_agree_with_revise(pipe):
    fast = pipe.with_engine("fast", dtype=torch.float32)
    options = EditOptions(class_id=7, seed=2, strength=3, revise=0.0, num_variants=2)
    a = pipe.edit(_image(), None, options)
    b = fast.edit(_image(), None, options)
    for x, y in zip(a.tokens, b.tokens):
        assert torch.equal(x, y)
    for x, y in zip(a.keep_masks, b.keep_masks):
        assert torch.equal(x, y)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "-2"])
def test_revise_validates(value):
    with pytest.raises(ValueError, match="revise"):
        EditOptions(class_id=1, strength=2, revise=value)


def test_cli_edit_revise(tmp_path: Path):
    Pipeline.random(seed=0).save_pretrained(tmp_path / "model")
    Image.fromarray(_image(24)).save(tmp_path / "img.png")
    out = tmp_path / "class.png"
    assert main(["edit", str(tmp_path / "img.png"), "--class", "3", "--revise", "-2",
                 "--checkpoint", str(tmp_path / "model"), "--steps", "0",
                 "--out", str(out)]) == 0
    assert Image.open(out).size == (24, 24)


def test_edit_class_revises_by_default(pipe):
    from hmar_core.editing import DEFAULT_CLASS_REVISE, default_class_strength

    image = _image()
    strength = default_class_strength(len(pipe.patch_nums))
    assert pipe.class_edit_defaults() == (strength, DEFAULT_CLASS_REVISE)  # none of its own

    def pixels(**fields: object) -> np.ndarray:
        return np.asarray(pipe.edit(image, None, EditOptions(class_id=4, seed=3, **fields)).image)

    assert np.array_equal(np.asarray(pipe.edit_class(image, 4, seed=3)),
                          pixels(strength=strength, revise=DEFAULT_CLASS_REVISE))
    assert np.array_equal(np.asarray(pipe.edit_class(image, 4, seed=3, revise=None)),
                          pixels(strength=strength))


def _with_class_defaults(pipe: Pipeline, strength: int, revise: float) -> Pipeline:
    """The same modules with a sampler config carrying its own class-edit defaults."""
    sampler = dataclasses.replace(pipe.sampler_config, class_strength=strength,
                                  class_revise=revise)
    return Pipeline(pipe.tokenizer, pipe.transformer, sampler, pipe.class_names)


def test_a_model_sets_its_own_class_edit_defaults(pipe, tmp_path: Path):
    """``class_strength`` / ``class_revise`` of the sampler config (the bundled model sets
    them from its measured class-edit success) replace the library's in ``edit_class``, the
    CLI and a saved folder; explicit arguments still win."""
    own = _with_class_defaults(pipe, 1, -1.0)
    assert own.class_edit_defaults() == (1, -1.0)
    image = _image()

    def pixels(model: Pipeline, **fields: object) -> np.ndarray:
        return np.asarray(model.edit(image, None, EditOptions(class_id=4, seed=3,
                                                              **fields)).image)

    assert np.array_equal(np.asarray(own.edit_class(image, 4, seed=3)),
                          pixels(own, strength=1, revise=-1.0))
    assert not np.array_equal(np.asarray(own.edit_class(image, 4, seed=3)),
                              np.asarray(pipe.edit_class(image, 4, seed=3)))
    assert np.array_equal(np.asarray(own.edit_class(image, 4, seed=3, strength=2, revise=None)),
                          pixels(own, strength=2))
    # capped: at least one scale is generated
    assert _with_class_defaults(pipe, 99, -1.0).class_edit_defaults().strength == len(
        pipe.patch_nums) - 1
    # saved with the model, read by the CLI (flags left open → the model's)
    own.save_pretrained(tmp_path / "model")
    assert Pipeline.from_pretrained(tmp_path / "model").class_edit_defaults() == (1, -1.0)
    Image.fromarray(image).save(tmp_path / "img.png")
    common = [str(tmp_path / "img.png"), "--class", "4", "--checkpoint", str(tmp_path / "model"),
              "--seed", "3"]
    assert main(["edit", *common, "--out", str(tmp_path / "cli.png")]) == 0
    assert main(["edit", *common, "--strength", "1", "--revise", "-1",
                 "--out", str(tmp_path / "flags.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli.png")),
                          np.asarray(Image.open(tmp_path / "flags.png")))


@pytest.mark.parametrize("field, value", [("class_strength", -1), ("class_strength", 1.5),
                                          ("class_revise", float("inf")),
                                          ("class_revise", "-1")])
def test_class_edit_defaults_are_checked(field, value):
    from hmar_core import SamplerConfig

    with pytest.raises(ValueError, match=field):
        SamplerConfig(**{field: value})


def test_cli_revise_off_and_bad_values(tmp_path: Path):
    Pipeline.random(seed=0).save_pretrained(tmp_path / "model")
    Image.fromarray(_image(24)).save(tmp_path / "img.png")
    common = [str(tmp_path / "img.png"), "--class", "3", "--checkpoint", str(tmp_path / "model"),
              "--steps", "0", "--seed", "1"]
    assert main(["edit", *common, "--revise", "off", "--out", str(tmp_path / "off.png")]) == 0
    assert main(["edit", *common, "--revise", "-1000000", "--out", str(tmp_path / "low.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "off.png")),
                          np.asarray(Image.open(tmp_path / "low.png")))
    with pytest.raises(SystemExit):
        main(["edit", *common, "--revise", "lots"])
