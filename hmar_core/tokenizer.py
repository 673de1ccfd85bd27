"""The multi-scale residual VQ-VAE tokenizer.

Shape legend: B = batch, C = channels, H×W = image size, h×w = latent grid, V = vocab.

The architecture is VAR's ``vae_ch160v4096z32`` parameterised by :class:`TokenizerConfig`
(channel width, multipliers, res-blocks, vocab, latent channels, downsampling factor). Module
names follow the official checkpoint layout (``encoder.down.0.block.0.conv1`` ...), so an
official state dict loads without renaming. The tokenizer is its own module: the pipeline passes
it to the sampler; the transformer never owns it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import pyramid
from .config import TokenizerConfig

__all__ = ["MultiScaleQuantizer", "MultiScaleVQTokenizer", "Phi"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv ×2 with a 1×1 shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(batch, 3, channels, height * width)
        q, k, v = qkv.unbind(1)  # each (B, C, HW)
        weights = torch.softmax(q.transpose(1, 2) @ k * channels**-0.5, dim=-1)  # (B, HW, HW)
        out = (v @ weights.transpose(1, 2)).reshape(batch, channels, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: res-blocks (+ attention at the lowest level) and a resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image (B, 3, H, W) → latent (B, Cvae, H/f, W/f), before ``quant_conv``."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        groups, widths = cfg.norm_groups, [cfg.channels * m for m in cfg.channel_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(cfg.image_channels, cfg.channels, 3, padding=1)
        self.down = nn.ModuleList()
        in_width = cfg.channels
        for level, width in enumerate(widths):
            stage = _Level()
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(in_width, width, groups))
                in_width = width
                if level == last:
                    stage.attn.append(AttnBlock(width, groups))
            if level != last:
                stage.downsample = Downsample(width)
            self.down.append(stage)
        self.mid = _Mid(in_width, groups)
        self.norm_out = _norm(in_width, groups)
        self.conv_out = nn.Conv2d(in_width, cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, Cvae, h, w) after ``post_quant_conv`` → image (B, 3, H, W), not clamped."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        groups, widths = cfg.norm_groups, [cfg.channels * m for m in cfg.channel_mult]
        last = len(widths) - 1
        width = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, width, 3, padding=1)
        self.mid = _Mid(width, groups)
        levels: list[_Level] = [_Level() for _ in widths]
        for level in reversed(range(len(widths))):  # coarse to fine, stored by level index
            stage = levels[level]
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock(width, widths[level], groups))
                width = widths[level]
                if level == last:
                    stage.attn.append(AttnBlock(width, groups))
            if level != 0:
                stage.upsample = Upsample(width)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(width, groups)
        self.conv_out = nn.Conv2d(width, cfg.image_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.features(z))

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """Everything before ``conv_out``: the activated (B, C, H, W) features it reads."""
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return F.silu(self.norm_out(h))


class Phi(nn.Conv2d):
    """phi(h) = (1 - r)·h + r·conv3x3(h), the residual refinement of each scale's embedding."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul(self.ratio)


class _PhiList(nn.Module):
    def __init__(self, channels: int, ratio: float, count: int) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList(Phi(channels, ratio) for _ in range(count))


class MultiScaleQuantizer(nn.Module):
    """Codebook (V, Cvae) plus the shared phi convs; scale → conv via ``cfg.phi_indices``."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.latent_channels)
        self.quant_resi = _PhiList(cfg.latent_channels, cfg.quant_resi, cfg.num_phi)

    @property
    def codebook(self) -> torch.Tensor:
        """The (V, Cvae) code vectors."""
        return self.embedding.weight

    def phis(self) -> list[Phi]:
        """One phi module per scale (resolved through the phi table)."""
        return [self.quant_resi.qresi_ls[k] for k in self.cfg.phi_indices]


class MultiScaleVQTokenizer(nn.Module):
    """Image ↔ token pyramid. Images are float (B, 3, H, W) in [-1, 1]."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 3, padding=1)

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.cfg.patch_nums

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a ``ValueError`` unless images are float (B, 3, S, S) at the model's size."""
        size, channels = self.cfg.image_size, self.cfg.image_channels
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ValueError("images must be a float tensor (B, C, H, W) in [-1, 1]")
        if images.dim() != 4 or images.shape[1] != channels or images.shape[2:] != (size, size):
            raise ValueError(f"images must have shape (B, {channels}, {size}, {size}) for this "
                             f"tokenizer, got {tuple(images.shape)}")

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """``quant_conv(encoder(images))``, the continuous latent (B, Cvae, h, w)."""
        self.check_images(images)
        return self.quant_conv(self.encoder(images))

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] → token pyramid, list of (B, pn²) int64."""
        tokens, _ = self.encode_with_fhat(images)
        return tokens

    def encode_with_fhat(
        self, images: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Token pyramid and the cumulative f_hat after each scale."""
        latent = self.encode_latent(images)
        return pyramid.quantize_residual(
            latent, self.quantize.codebook, self.quantize.phis(), self.patch_nums
        )

    def fhat_from_tokens(self, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Cumulative f_hat after each given scale (a prefix of the pyramid is allowed)."""
        self.check_tokens(tokens, allow_prefix=True)
        return pyramid.fhat_from_tokens(
            tokens, self.quantize.codebook, self.quantize.phis(), self.patch_nums
        )

    def decode_fhat(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, Cvae, h, w) → images (B, 3, H, W) clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def decode(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        """Token pyramid → images (B, 3, H, W) in [-1, 1]."""
        self.check_tokens(tokens)
        return self.decode_fhat(self.fhat_from_tokens(tokens)[-1])

    def check_tokens(self, tokens: Sequence[torch.Tensor], allow_prefix: bool = False) -> None:
        """Raise a ``ValueError`` unless ``tokens`` is a valid (prefix of a) token pyramid."""
        if not isinstance(tokens, (list, tuple)) or not tokens:
            raise ValueError("tokens must be a non-empty list of (B, pn²) int64 tensors")
        expected = len(self.patch_nums)
        if len(tokens) > expected or (not allow_prefix and len(tokens) != expected):
            raise ValueError(f"expected {expected} scales of tokens, got {len(tokens)}")
        batch = tokens[0].shape[0] if tokens[0].dim() == 2 else -1
        for si, idx in enumerate(tokens):
            pn = self.patch_nums[si]
            if idx.dtype != torch.int64 or idx.dim() != 2 or idx.shape != (batch, pn * pn):
                raise ValueError(f"scale {si} tokens must be int64 ({batch}, {pn * pn}), got "
                                 f"{idx.dtype} {tuple(idx.shape)}")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.cfg.vocab_size):
                raise ValueError(f"scale {si} tokens out of range [0, {self.cfg.vocab_size})")
