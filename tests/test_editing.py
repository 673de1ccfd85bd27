"""Editing end to end on the tiny random pipeline (16×16 images, pyramid (1, 2, 3, 4))."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from nudged import nudged
from PIL import Image

from hmar_core import EditOptions, EditSpec, Pipeline
from hmar_core.images import from_model_images

RNG = np.random.default_rng(1)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return nudged(Pipeline.random(seed=0))


def _image(height: int, width: int) -> np.ndarray:
    """A smooth colourful test image (random noise would be unlike anything encoded)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1),
                    (x + y) % 64 * 4], axis=-1)
    return rgb.astype(np.uint8)


def _far_from(mask: np.ndarray, feather: int) -> np.ndarray:
    """Pixels farther than ``feather`` (Chebyshev) from the mask."""
    kernel = np.ones((2 * feather + 1, 2 * feather + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel) == 0


def test_empty_spec_is_plain_generation(pipe):
    out = pipe.generate([3, 7], seed=11)
    settings, schedule = pipe.sampler_settings(), pipe.resolve_schedule()
    generator, _ = pipe.make_generator(11)
    labels = torch.tensor([3, 7])
    edited = pipe.sample_tokens(labels, settings, schedule, generator,
                                constraint=EditSpec.empty(pipe.patch_nums, labels))
    assert all(torch.equal(a, b) for a, b in zip(out.tokens, edited.tokens))


@pytest.mark.parametrize("steps", [None, 2])
def test_full_mask_strength_zero_equals_generate(pipe, steps):
    image = _image(16, 16)
    result = pipe.edit(image, np.ones((16, 16), bool), EditOptions(class_id=4, seed=5,
                                                                   steps=steps))
    plain = pipe.generate(4, seed=5, steps=steps)
    assert all(torch.equal(a, b) for a, b in zip(result.tokens, plain.tokens))
    expected = from_model_images(plain.images * 2 - 1)[0]
    assert np.array_equal(np.asarray(result.image), expected)
    assert np.array_equal(np.asarray(pipe.inpaint(image, np.ones((16, 16)), class_id=4, seed=5,
                                                  steps=steps)), expected)


@pytest.mark.parametrize("fit", ["whole", "masked"])
@pytest.mark.parametrize("size", [(16, 16), (37, 91), (64, 48)])
def test_pixels_outside_mask_and_feather_are_exact(pipe, fit, size):
    image = _image(*size)
    mask = np.zeros(size, bool)
    mask[size[0] // 3:size[0] // 2, size[1] // 4:size[1] // 2] = True
    out = np.asarray(pipe.inpaint(image, mask, seed=2, feather=3, fit=fit, padding=4, steps=0))
    assert out.shape == image.shape
    far = _far_from(mask, 3)
    assert np.array_equal(out[far], image[far])
    assert not np.array_equal(out[mask], image[mask])


def test_empty_mask_returns_input_without_model_call(pipe):
    image = Image.fromarray(_image(20, 30))
    result = pipe.edit(image, np.zeros((20, 30), bool), EditOptions(num_variants=2))
    assert result.confidence is None and result.tokens == []  # the model never ran
    assert all(np.array_equal(np.asarray(i), np.asarray(image)) for i in result.images)
    assert np.array_equal(np.asarray(pipe.outpaint(image)), np.asarray(image))


def test_kept_tokens_equal_source_and_regenerated_ones_change(pipe):
    image = _image(16, 16)
    mask = np.zeros((16, 16), bool)
    mask[8:, 8:] = True
    changed, total = 0, 0
    for seed in range(3):
        result = pipe.edit(image, mask, EditOptions(seed=seed, grow=0, strength=1, steps=2,
                                                    num_variants=2))
        for tokens, source, keep in zip(result.tokens, result.source_tokens, result.keep_masks):
            assert keep.any()  # something is kept at every scale
            assert torch.equal(tokens[keep], source[keep])
            changed += int((tokens[~keep] != source[~keep]).sum())
            total += int((~keep).sum())
        assert result.keep_masks[0].all()  # strength 1 keeps scale 0
    assert total > 0 and changed / total > 0.5


def test_seeds_variants_and_class_edit(pipe):
    image, mask = _image(24, 24), np.zeros((24, 24), bool)
    mask[4:14, 6:20] = True
    first = np.asarray(pipe.inpaint(image, mask, seed=3, feather=2))
    again = np.asarray(pipe.inpaint(image, mask, seed=3, feather=2))
    other = np.asarray(pipe.inpaint(image, mask, seed=4, feather=2))
    assert np.array_equal(first, again) and not np.array_equal(first[mask], other[mask])
    variants = pipe.inpaint(image, mask, seed=3, num_variants=3, feather=2)
    assert len(variants) == 3 and all(v.size == (24, 24) for v in variants)
    assert not np.array_equal(np.asarray(variants[0]), np.asarray(variants[1]))
    result = pipe.edit(image, None, EditOptions(class_id=2, seed=1, strength=2))
    assert result.labels.tolist() == [2] and result.image.size == (24, 24)
    assert all(k.all() for k in result.keep_masks[:2]) and not result.keep_masks[3].any()
    nine = [np.asarray(pipe.edit_class(image, 9, mask, seed=s, strength=0, steps=0))
            for s in range(4)]
    one = [np.asarray(pipe.edit_class(image, 1, mask, seed=s, strength=0, steps=0))
           for s in range(4)]
    assert nine[0].shape == (24, 24, 3)
    assert not all(np.array_equal(a, b) for a, b in zip(nine, one))


def test_previews_and_confidence(pipe):
    previews = []
    result = pipe.edit(_image(20, 40), np.ones((20, 40), bool),
                       EditOptions(seed=0, num_variants=2), on_preview=previews.append)
    assert [p.scale for p in previews] == [0, 1, 2, 3]
    assert all(len(p.images) == 2 and p.images[0].size == (40, 20) for p in previews)
    assert previews[-1].confidence.shape == (2, 4, 4) and result.confidence.shape == (2, 4, 4)
    assert torch.equal(previews[-1].confidence, result.confidence)
    assert previews[-1].images[0] == result.images[0]
    assert len(result.scale_seconds) == 4 and all(t >= 0 for t in result.scale_seconds)


@pytest.mark.parametrize(("mode", "kept"), [
    ("L", "L"), ("LA", "LA"), ("P", "RGB"), ("RGBA", "RGBA"), ("I;16", "L"), ("CMYK", "RGB")])
def test_image_modes(pipe, mode, kept):
    image = Image.fromarray(_image(21, 13)).convert(mode)
    out = pipe.inpaint(image, np.eye(21, 13, dtype=bool), seed=0, steps=0)
    assert out.mode == kept and out.size == (13, 21)  # the input's mode (editing/modes.py)


@pytest.mark.parametrize("size", [(1, 1), (37, 91), (2, 300)])
def test_odd_sizes(pipe, size):
    image = _image(*size)
    assert pipe.inpaint(image, np.ones(size), seed=0, steps=0).size == size[::-1]
    assert pipe.inpaint(image, np.ones(size), seed=0, steps=0, fit="masked").size == size[::-1]
    assert pipe.edit_class(image, 1, seed=0, steps=0).size == size[::-1]


def test_outpaint_sizes_windows_and_exact_original(pipe):
    image = _image(20, 30)
    result = pipe.outpaint(image, left=4, right=6, top=0, bottom=2, seed=1, feather=2, steps=0)
    assert result.size == (40, 22)
    new_area = np.ones((22, 40), bool)
    new_area[:20, 4:34] = False
    far = _far_from(new_area, 2)
    assert far.sum() > 300 and np.array_equal(np.asarray(result)[:20, 4:34][far[:20, 4:34]],
                                               image[far[:20, 4:34]])
    from hmar_core.editing import outpaint

    wide = outpaint(pipe, image, right=70, bottom=10,
                          options=EditOptions(seed=2, steps=0, feather=0, num_variants=2))
    assert len(wide.windows) > 1 and all(i.size == (100, 30) for i in wide.images)
    assert np.array_equal(np.asarray(wide.images[0])[:20, :30], image)
    assert not np.array_equal(np.asarray(wide.images[0]), np.asarray(wide.images[1]))


def test_bad_inputs(pipe):
    image, mask = _image(16, 16), np.ones((16, 16), bool)
    bad_calls = [
        lambda: pipe.inpaint(image, mask, class_id=10),
        lambda: pipe.inpaint(image, mask, class_id=-1),
        lambda: pipe.edit_class(image, 99),
        lambda: pipe.edit_class(image, "cat"),
        lambda: pipe.inpaint(np.zeros((0, 4, 3), np.uint8), mask),
        lambda: pipe.inpaint(image, "mask.png"),
        lambda: pipe.inpaint(image, [[1, 0]]),
        lambda: pipe.inpaint(image, mask, fit="crop"),
        lambda: pipe.inpaint(image, mask, strength=5),
        lambda: pipe.inpaint(image, mask, seed=-3),
        lambda: pipe.inpaint(image, mask, num_variants=0),
        lambda: pipe.inpaint(image, mask, feather=-2),
        lambda: pipe.outpaint(image, left=-1),
        lambda: pipe.outpaint(image, right=1.5),
        lambda: pipe.outpaint(image, right=4, fill="noise"),
        lambda: pipe.outpaint(image, right=100000),
        lambda: pipe.edit(image, mask, EditOptions(fine_from=9, fine_seed=1)),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()


def test_var_kept_scales_still_fill_the_kv_cache():
    """A VAR edit's first sampled scale sees the kept scales exactly as teacher forcing does."""
    from hmar_core import SamplerConfig, TransformerConfig, sample
    from hmar_core.model import ScaleRunner
    from hmar_core.schedules import schedule_from_steps

    var = nudged(Pipeline.random(transformer_cfg=TransformerConfig.from_name(
        "tiny", kind="var", n_layers_train=0)))
    images = torch.from_numpy(_image(16, 16)).permute(2, 0, 1)[None].float() / 127.5 - 1
    source = var.tokenizer.encode(images)
    labels = torch.tensor([3])
    regenerate = tuple(torch.ones_like(t, dtype=torch.bool) for t in source)
    spec = EditSpec(tuple(source), regenerate, labels, strength=2)
    runner, seen = ScaleRunner(var.transformer), {}

    def model_fn(labels, inputs):
        seen[inputs.scale] = runner(labels, inputs)
        return seen[inputs.scale]

    model_fn.stateful = True
    out = sample(model_fn, var.tokenizer.quantize, var.patch_nums, SamplerConfig(cfg=0.0),
                 schedule_from_steps(var.patch_nums, 0), labels=labels,
                 null_class=var.transformer.cfg.null_class, generator=torch.Generator(),
                 constraint=spec)
    assert all(torch.equal(out.tokens[s], source[s]) for s in (0, 1))
    with torch.no_grad():
        teacher = var.model(labels, out.tokens)  # (1, L, V), block-causal teacher forcing
    torch.testing.assert_close(seen[2], teacher[:, 5:14], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_to_host_and_device_keep_dtypes_shapes_values_and_order(device):
    from hmar_core.editing.host import to_device, to_host

    tensors = [torch.arange(6).view(2, 3), torch.tensor([[True, False]]), torch.rand(2, 2, 2),
               torch.zeros(0, 4, dtype=torch.int64), torch.tensor(7), torch.arange(3) * 2]
    there = to_device(tensors, torch.device(device))
    out = to_host(there)
    assert len(there) == len(out) == len(tensors)
    for moved, a, b in zip(there, out, tensors):
        assert moved.device.type == device and a.device.type == "cpu"
        assert a.dtype == b.dtype == moved.dtype and a.shape == b.shape == moved.shape
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_spec_from_a_host_mask_equals_the_device_made_one():
    """The editor's path (mask on the host, masks copied once) makes the device path's spec."""
    patch_nums = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    gen = torch.Generator().manual_seed(3)
    source = [torch.randint(0, 64, (2, pn * pn), generator=gen).cuda() for pn in patch_nums]
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    mask[0, 10:30, 5:50] = True
    mask[1] = True
    labels = torch.tensor([1, 2], device="cuda")
    for strength in (0, 3):
        host = EditSpec.from_pixel_mask(source, mask, labels, patch_nums, strength=strength)
        made = EditSpec.from_pixel_mask(source, mask.cuda(), labels, patch_nums,
                                        strength=strength)
        assert host._summary == made._summary
        for si in range(len(patch_nums)):
            assert host.regenerate[si].device.type == "cuda"
            assert torch.equal(host.regenerate[si], made.regenerate[si])
            a, b = host.keep(si), made.keep(si)
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
