"""The fast engine's decoder with its output convolution padded (``vae_pad_channels``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from hmar_core import Pipeline
from hmar_core.fast.vae import PaddedOutputConv, fast_decoder


@pytest.mark.parametrize("channels", [3, 8, 16])
@pytest.mark.parametrize("bias", [True, False])
def test_padded_conv_equals_the_conv(channels, bias):
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(12, 3, 3, padding=1, bias=bias).double()
    with torch.no_grad():
        for param in conv.parameters():
            param.normal_(generator=gen)
    x = torch.randn(2, 12, 9, 7, generator=gen, dtype=torch.float64)
    padded = PaddedOutputConv(conv, channels)
    assert padded.weight.shape == (channels, 12, 3, 3)
    torch.testing.assert_close(padded(x), conv(x), rtol=1e-12, atol=1e-12)
    if channels > 3:
        assert padded.weight[3:].abs().sum() == 0 and padded.bias[3:].abs().sum() == 0


def test_padded_conv_validates():
    with pytest.raises(ValueError, match="must be >="):
        PaddedOutputConv(nn.Conv2d(4, 3, 3), 2)
    with pytest.raises(ValueError, match="ungrouped"):
        PaddedOutputConv(nn.Conv2d(4, 4, 3, groups=2), 8)


def test_fast_decoder_shares_the_modules():
    pipe = Pipeline.random(seed=1)
    tok = pipe.tokenizer
    plain = fast_decoder(tok.post_quant_conv, tok.decoder, 0)
    padded = fast_decoder(tok.post_quant_conv, tok.decoder, 16)
    assert len(plain) == 2 and plain[1] is tok.decoder
    assert padded[1].decoder is tok.decoder and padded[2].weight.shape[0] == 16
    gen = torch.Generator().manual_seed(2)
    f_hat = torch.randn(2, tok.cfg.latent_channels, 4, 4, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(padded(f_hat), plain(f_hat), rtol=1e-5, atol=1e-5)


def test_inpaint_same_with_and_without_padding(tmp_path):
    """The public path: an inpaint on the fast engine gives the same tokens and (to a grey
    level) the same pixels with the padded output conv as without it."""
    Pipeline.random(seed=3).save_pretrained(tmp_path)
    plain = Pipeline.from_pretrained(tmp_path, engine="fast", dtype=torch.float32,
                                     vae_pad_channels=0)
    padded = plain.with_engine("fast", dtype=torch.float32, vae_pad_channels=16)
    picture = (np.random.RandomState(1).rand(32, 32, 3) * 255).astype(np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 4:20] = True
    args = (Image.fromarray(picture), Image.fromarray(mask))
    want = plain.edit(*args, seed=5, steps=2)
    got = padded.edit(*args, seed=5, steps=2)
    for a, b in zip(want.tokens, got.tokens):
        assert torch.equal(a, b)
    diff = np.abs(np.asarray(got.images[0], np.int16) - np.asarray(want.images[0], np.int16))
    assert diff.max() <= 1
    assert not np.array_equal(np.asarray(got.images[0]), picture)


@pytest.mark.parametrize("value", [-1, 2.5, True])
def test_engine_rejects_bad_padding(value):
    pipe = Pipeline.random(seed=1, engine="fast", vae_pad_channels=value)
    with pytest.raises(ValueError, match="vae_pad_channels"):
        _ = pipe.backend  # the engine is built on first use


@pytest.mark.gpu
def test_padded_decoder_on_cuda_is_the_default_and_matches_the_plain_one(tiny_pipe):
    """On CUDA (bf16, compiled, graphed for small batches) the padded output conv is on by
    default and decodes what the plain one decodes, to bf16 rounding."""
    pipe = tiny_pipe.to("cuda")
    padded = pipe.with_engine("fast")
    plain = pipe.with_engine("fast", vae_pad_channels=0)
    assert padded.backend.vae_pad_channels == 16 and plain.backend.vae_pad_channels == 0
    gen = torch.Generator("cuda").manual_seed(0)
    side = pipe.patch_nums[-1]
    for batch in (2, 20):  # graphed, and above vae_graph_batch
        f_hat = torch.randn(batch, pipe.tokenizer.cfg.latent_channels, side, side,
                            generator=gen, device="cuda")
        with torch.no_grad():
            a, b = padded.backend.decode(f_hat), plain.backend.decode(f_hat)
        assert a.shape == b.shape == (batch, 3, pipe.image_size, pipe.image_size)
        assert float((a - b).abs().max()) < 2e-2
