"""The token cache file (``token_cache_file``): written once, loaded by the next run when the
probe samples re-encode to the same tokens, re-made when anything that shapes the tokens
changed (tokenizer weights, crop seed, crop count) or the file is damaged."""

from __future__ import annotations

import logging

import pytest
import torch
from train_helpers import SIZE, TEST_TOKENIZER

from hmar_core.tokenizer import MultiScaleVQTokenizer
from train import tokens as tokens_module
from train.batches import StepBatchSampler
from train.data.folder import ImageFolderDataset
from train.distributed import DistContext
from train.tokens import CachedTokens


@pytest.fixture
def parts(image_root):
    torch.manual_seed(0)
    tokenizer = MultiScaleVQTokenizer(TEST_TOKENIZER).eval()
    dataset = ImageFolderDataset(image_root / "train", SIZE, train=True, seed=3)
    ctx = DistContext()
    sampler = StepBatchSampler(dataset.targets, 8, 0, ctx)
    return tokenizer, dataset, sampler, ctx


def _cache(parts, crops, path, seed=None):
    tokenizer, dataset, sampler, ctx = parts
    if seed is not None:
        dataset = ImageFolderDataset(dataset.root, SIZE, train=True, seed=seed)
    return CachedTokens(tokenizer, dataset, sampler, crops, ctx, 16, 0, path)


@pytest.fixture
def encoded(monkeypatch):
    """How many samples each CachedTokens encodes."""
    counts: list[int] = []
    real = tokens_module.encode_keys

    def counting(tokenizer, dataset, keys, *args, **kwargs):
        counts.append(len(keys))
        return real(tokenizer, dataset, keys, *args, **kwargs)

    monkeypatch.setattr(tokens_module, "encode_keys", counting)
    return counts


def test_written_then_loaded_after_a_probe(parts, encoded, tmp_path, caplog):
    path = tmp_path / "cache.safetensors"
    first = _cache(parts, 2, path)
    count = len(parts[1])
    assert path.exists() and encoded == [2 * count]
    encoded.clear()
    with caplog.at_level(logging.INFO, logger="train.tokens"):
        second = _cache(parts, 2, path)
    assert encoded == [tokens_module.CACHE_PROBES]  # only the probes
    assert "loaded" in caplog.text
    assert torch.equal(second.tokens, first.tokens) and torch.equal(second.labels, first.labels)
    assert torch.equal(second.batch(5)[0], first.batch(5)[0])
    plain = _cache(parts, 2, None)  # no file: the same tokens, encoded
    assert torch.equal(plain.tokens, first.tokens)


@pytest.mark.parametrize("change", ["tokenizer", "crop seed", "crops", "damaged"])
def test_a_changed_run_encodes_again_and_rewrites(parts, encoded, tmp_path, caplog, change):
    path = tmp_path / "cache.safetensors"
    _cache(parts, 2, path)
    count = len(parts[1])
    encoded.clear()
    crops, seed = 2, None
    if change == "tokenizer":
        with torch.no_grad():
            parts[0].quantize.embedding.weight.mul_(-1)
    elif change == "crop seed":
        seed = 4
    elif change == "crops":
        crops = 3
    else:
        path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="train.tokens"):
        again = _cache(parts, crops, path, seed)
    assert encoded[-1] == crops * count, "the cache was not encoded again"
    assert "encoding again" in caplog.text
    fresh = _cache(parts, crops, None, seed)
    assert torch.equal(again.tokens, fresh.tokens)
    encoded.clear()
    _cache(parts, crops, path, seed)  # the rewritten file now matches
    assert encoded == [tokens_module.CACHE_PROBES]


def test_probe_keys_cover_every_crop_and_the_ends():
    keys = tokens_module._probe_keys(3, 100)
    assert len(keys) == tokens_module.CACHE_PROBES
    assert {c for c, _ in keys} == {0, 1, 2}
    assert keys[0] == (0, 0) and keys[-1] == (2, 99)
    assert tokens_module._probe_keys(1, 5) == [(0, i) for i in range(5)]
