"""A small patch discriminator, trained from scratch (no downloaded perceptual network).

PatchGAN layout: strided 4×4 convolutions (LeakyReLU 0.2, GroupNorm after the first), ending in
a one-channel map of per-patch real/fake logits. Hinge losses. Off by default
(``TokenizerTrainConfig.disc_weight = 0``); it sharpens reconstructions of larger tokenizers.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PatchDiscriminator", "discriminator_hinge_loss", "generator_hinge_loss"]


class PatchDiscriminator(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] → patch logits (B, 1, h, w).

    Args:
        channels: width of the first layer (doubles per layer, capped at 8×).
        layers: number of stride-2 layers (the image side must be ≥ 2**layers).
        image_channels: input channels.
    """

    def __init__(self, channels: int = 64, layers: int = 3, image_channels: int = 3) -> None:
        super().__init__()
        widths = [channels * min(2**i, 8) for i in range(layers)]
        modules: list[nn.Module] = [
            nn.Conv2d(image_channels, widths[0], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for prev, width in zip(widths, widths[1:]):
            modules += [nn.Conv2d(prev, width, 4, stride=2, padding=1, bias=False),
                        nn.GroupNorm(min(32, width // 4) or 1, width), nn.LeakyReLU(0.2)]
        modules.append(nn.Conv2d(widths[-1], 1, 3, padding=1))
        self.net = nn.Sequential(*modules)
        self.min_size = 2**layers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if min(images.shape[-2:]) < self.min_size:
            raise ValueError(f"images of side {images.shape[-1]} are too small for "
                             f"{int(math.log2(self.min_size))} discriminator layers")
        return self.net(images)

    @torch.no_grad()
    def init_weights_(self, generator: torch.Generator) -> PatchDiscriminator:
        """N(0, 0.02) convolutions, unit/zero GroupNorm, zero biases (from ``generator``)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.GroupNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        return self


def discriminator_hinge_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor
                             ) -> torch.Tensor:
    """mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))."""
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


def generator_hinge_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """−mean(D(fake))."""
    return -logits_fake.float().mean()
