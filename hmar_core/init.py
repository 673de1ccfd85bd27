"""Weight initialisation (the official training init) and random pipelines for tests/benchmarks.

Functions take an explicit ``torch.Generator``; nothing touches the global RNG.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import TokenizerConfig, TransformerConfig
from .tokenizer import MultiScaleVQTokenizer
from .transformer import HMARTransformer

__all__ = ["init_tokenizer_", "init_transformer_", "random_modules"]


def _trunc_normal_(t: torch.Tensor, std: float, generator: torch.Generator) -> None:
    values = torch.randn(t.shape, generator=generator, dtype=torch.float32)
    t.copy_(values.clamp_(-2, 2).mul_(std).to(t.dtype))


@torch.no_grad()
def init_transformer_(
    model: HMARTransformer,
    generator: torch.Generator,
    *,
    head_scale: float = 0.02,
    ada_scale: float = 0.5,
    gamma_scale: float = 1e-3,
) -> HMARTransformer:
    """The official training init (spec §2.2), in place.

    std = sqrt(1/(3C)) truncated normal for linears and embeddings, zero biases; heads ×
    ``head_scale``; head AdaLN × ``ada_scale``; per block: ``proj``/``fc2`` ÷ sqrt(2·depth), AdaLN
    gamma rows × ``gamma_scale`` (official ``alng``), other AdaLN rows × ``ada_scale``; log
    temperature log 4; q/v biases 0; ``mask_embed`` truncated normal.
    """
    cfg = model.cfg
    std = math.sqrt(1 / (3 * cfg.width))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            _trunc_normal_(module.weight, std, generator)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            _trunc_normal_(module.weight, std, generator)
    for param in (model.pos_start, model.pos_embed):
        _trunc_normal_(param, std, generator)
    model.word_embed_bias.zero_()
    heads = [model.ns_head] + ([model.mask_head] if cfg.has_mask_branch else [])
    for head in heads:
        head.out.weight.mul_(head_scale)
        head.ada_lin.weight.mul_(ada_scale)
    if cfg.has_mask_branch:
        _trunc_normal_(model.mask_embed, std, generator)
    blocks = list(model.base_blocks) + list(model.ns_blocks)
    blocks += list(model.mask_blocks) if cfg.has_mask_branch else []
    width = cfg.width
    for block in blocks:
        block.attn.proj.weight.div_(math.sqrt(2 * cfg.depth))
        block.ffn.fc2.weight.div_(math.sqrt(2 * cfg.depth))
        block.ada_lin.weight[: 2 * width].mul_(gamma_scale)
        block.ada_lin.weight[2 * width :].mul_(ada_scale)
        block.attn.log_scale.fill_(math.log(4.0))
        block.attn.q_bias.zero_()
        block.attn.v_bias.zero_()
    return model


@torch.no_grad()
def init_tokenizer_(
    model: MultiScaleVQTokenizer, generator: torch.Generator
) -> MultiScaleVQTokenizer:
    """Kaiming-uniform-like convs (PyTorch's default rule, from ``generator``), uniform codebook."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 2 * bound
                                - bound)
            if module.bias is not None:
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 2 * bound
                                  - bound)
        elif isinstance(module, nn.GroupNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
    vocab = model.cfg.vocab_size
    codebook = model.quantize.embedding.weight
    codebook.copy_((torch.rand(codebook.shape, generator=generator) * 2 - 1) / vocab)
    return model


def random_modules(
    tokenizer_cfg: TokenizerConfig, transformer_cfg: TransformerConfig, seed: int = 0
) -> tuple[MultiScaleVQTokenizer, HMARTransformer]:
    """A freshly initialised tokenizer and transformer (CPU, float32), reproducible by seed."""
    generator = torch.Generator().manual_seed(seed)
    tokenizer = init_tokenizer_(MultiScaleVQTokenizer(tokenizer_cfg), generator)
    transformer = init_transformer_(HMARTransformer(transformer_cfg), generator)
    return tokenizer, transformer
