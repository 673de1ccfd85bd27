"""The network: per-scale inference equals teacher forcing (HMAR and VAR's KV cache)."""

from __future__ import annotations

import torch

from hmar_core import Pipeline, TokenizerConfig, TransformerConfig
from hmar_core.model import ScaleRunner
from hmar_core.pyramid import scale_slices
from hmar_core.sampler import ScaleInput


def _random_tokens(pipe: Pipeline, batch: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    vocab = pipe.transformer.cfg.vocab_size
    return [torch.randint(vocab, (batch, pn * pn), generator=gen) for pn in pipe.patch_nums]


def _per_scale_logits(pipe: Pipeline, labels: torch.Tensor, tokens: list[torch.Tensor]):
    x_ns, _, _ = pipe.model.inputs(tokens)
    runner = ScaleRunner(pipe.transformer)
    out = []
    slices = scale_slices(pipe.patch_nums)
    for si in range(len(pipe.patch_nums)):
        x = None if si == 0 else x_ns[:, slices[si].start - 1: slices[si].stop - 1]
        out.append(runner(labels, ScaleInput(si, x)))
    return torch.cat(out, dim=1)


def test_hmar_per_scale_equals_teacher_forcing(tiny_pipe):
    """Block-diagonal attention makes HMAR Markovian: each scale alone gives the same logits."""
    labels = torch.tensor([1, 10, 3])
    tokens = _random_tokens(tiny_pipe, 3, 0)
    with torch.no_grad():
        full = tiny_pipe.model(labels, tokens)
        per_scale = _per_scale_logits(tiny_pipe, labels, tokens)
    assert (full - per_scale).abs().max() <= 1e-5 * full.abs().max()


def test_var_kv_cache_equals_block_causal_teacher_forcing():
    pipe = Pipeline.random(TokenizerConfig.from_name("tiny"),
                           TransformerConfig.from_name("tiny", kind="var"), seed=3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the training init damps attention ×1e-3: make it matter here
        for block in pipe.transformer.base_blocks:
            block.ada_lin.weight.copy_(torch.randn(block.ada_lin.weight.shape, generator=gen))
    assert pipe.transformer.scale_mask.pattern == "block_causal"
    labels = torch.tensor([0, 4])
    tokens = _random_tokens(pipe, 2, 1)
    with torch.no_grad():
        full = pipe.model(labels, tokens)
        cached = _per_scale_logits(pipe, labels, tokens)
        # a fresh cache per scale (each scale alone) must differ: the cache really matters
        x_ns, _, _ = pipe.model.inputs(tokens)
        last = scale_slices(pipe.patch_nums)[-1]
        alone = ScaleRunner(pipe.transformer)(labels, ScaleInput(3, x_ns[:, last.start - 1:]))
    assert (full - cached).abs().max() <= 1e-5 * full.abs().max()
    assert (full[:, last] - alone).abs().max() > 1e-3


def test_mask_branch_uses_mask_embedding(tiny_pipe):
    labels = torch.tensor([2, 2])
    tokens = _random_tokens(tiny_pipe, 2, 5)
    none = [torch.zeros_like(t, dtype=torch.bool) for t in tokens]
    some = [m.clone() for m in none]
    some[2][0, :4] = True
    with torch.no_grad():
        a = tiny_pipe.model(labels, tokens, none)
        b = tiny_pipe.model(labels, tokens, some)
    s2 = scale_slices(tiny_pipe.patch_nums)[2]
    assert (a[0, s2] - b[0, s2]).abs().max() > 1e-4  # sample 0, scale 2 changed
    assert torch.allclose(a[1], b[1], atol=1e-6)  # sample 1 untouched: masks are per sample
    assert torch.allclose(a[0, :s2.start], b[0, :s2.start], atol=1e-6)  # other scales untouched
