"""Public API end to end on a tiny random model: generation, determinism, bad input."""

from __future__ import annotations

import time

import pytest
import torch

from hmar_core import Pipeline, TokenizerConfig, TransformerConfig


def test_generate_end_to_end_fast(tiny_pipe):
    start = time.perf_counter()
    out = tiny_pipe.generate([1, 2, 3], seed=0, steps=2)
    assert time.perf_counter() - start < 5.0
    size = tiny_pipe.image_size
    assert out.images.shape == (3, 3, size, size)
    assert out.images.min() >= 0 and out.images.max() <= 1
    assert [t.shape for t in out.tokens] == [(3, pn * pn) for pn in tiny_pipe.patch_nums]
    assert out.confidence.shape == (3, 4, 4)
    assert out.labels.tolist() == [1, 2, 3]


def test_same_seed_same_tokens_other_seed_differs(tiny_pipe):
    a = tiny_pipe.generate(4, seed=11, batch_size=2)
    b = tiny_pipe.generate(4, seed=11, batch_size=2)
    c = tiny_pipe.generate(4, seed=12, batch_size=2)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens))
    assert not all(torch.equal(x, y) for x, y in zip(a.tokens, c.tokens))
    assert torch.equal(a.images, b.images)


def test_random_labels_and_seed_reported(tiny_pipe):
    out = tiny_pipe.generate(None, batch_size=3)
    assert isinstance(out.seed, int)
    again = tiny_pipe.generate(None, batch_size=3, seed=out.seed)
    assert torch.equal(out.labels, again.labels)
    assert out.labels.min() >= 0 and out.labels.max() < tiny_pipe.num_classes


def test_on_scale_reports_every_scale(tiny_pipe):
    seen = []
    tiny_pipe.generate(1, seed=0, on_scale=lambda state: seen.append(state.scale))
    assert seen == list(range(len(tiny_pipe.patch_nums)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_ids": 99}, "out of range"),
        ({"class_ids": [-1]}, "out of range"),
        ({"class_ids": 1, "mask_schedule": [[1], [4]]}, "scales"),
        ({"class_ids": 1, "mask_schedule": [[1], [4], [9], [15]]}, "sums to"),
        ({"class_ids": 1, "steps": 1, "mask_schedule": [[1], [4], [9], [16]]}, "either"),
        ({"class_ids": 1, "top_p": 2.0}, "top_p"),
        ({"class_ids": 1, "cfg": -3.0}, "cfg"),
        ({"class_ids": 1, "seed": -5}, "seed"),
        ({"class_ids": [1, 2], "batch_size": 3}, "batch"),
        ({"class_ids": []}, "at least one"),
    ],
)
def test_bad_generate_arguments(tiny_pipe, kwargs, message):
    class_ids = kwargs.pop("class_ids")
    with pytest.raises(ValueError, match=message):
        tiny_pipe.generate(class_ids, **kwargs)


def test_tokenizer_rejects_wrong_images(tiny_pipe):
    with pytest.raises(ValueError, match="shape"):
        tiny_pipe.tokenizer.encode(torch.zeros(1, 3, 17, 16))
    with pytest.raises(ValueError, match="float"):
        tiny_pipe.tokenizer.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="scales"):
        tiny_pipe.tokenizer.decode([torch.zeros(1, 1, dtype=torch.int64)])
    bad = [torch.zeros(1, pn * pn, dtype=torch.int64) for pn in tiny_pipe.patch_nums]
    bad[2][0, 0] = 10_000
    with pytest.raises(ValueError, match="out of range"):
        tiny_pipe.tokenizer.decode(bad)


def test_encode_decode_roundtrip_shapes(tiny_pipe):
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    tokens = tiny_pipe.tokenizer.encode(images)
    assert [t.shape for t in tokens] == [(2, pn * pn) for pn in tiny_pipe.patch_nums]
    assert tiny_pipe.tokenizer.decode(tokens).shape == images.shape


def test_var_model_generates_and_refuses_mask_steps():
    pipe = Pipeline.random(TokenizerConfig.from_name("tiny"),
                           TransformerConfig.from_name("tiny", kind="var"))
    out = pipe.generate([0, 1], seed=0, cfg=1.5)
    assert out.images.shape[0] == 2
    with pytest.raises(ValueError, match="no mask branch"):
        pipe.generate(1, seed=0, steps=2)


def test_mismatched_parts_refused():
    from hmar_core.init import random_modules

    tok, _ = random_modules(TokenizerConfig.from_name("tiny"), TransformerConfig.from_name("tiny"))
    _, big = random_modules(TokenizerConfig.from_name("tiny"),
                            TransformerConfig.from_name("tiny", patch_nums=(1, 2, 4)))
    with pytest.raises(ValueError, match="pyramid"):
        Pipeline(tok, big)
