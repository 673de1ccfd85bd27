"""Token pyramids for HMAR training, from a frozen tokenizer.

Shape legend: N = dataset size, b = local batch, L = tokens of the pyramid (sum of pn²).

Two sources with the same interface, ``batch(step) -> (tokens (b, L) int64, labels (b,))``:

* :class:`OnTheFlyTokens` — load the step's images (DataLoader workers) and encode them.
* :class:`CachedTokens` — encode the dataset once for ``crops`` crop-epochs (epoch e of the
  stream uses crop e mod ``crops``) and index the cache; for small datasets this removes the
  tokenizer from the step entirely. Every rank encodes a share and the shares are gathered, so
  all ranks hold the same cache.

Both take their batches from a :class:`~train.batches.StepBatchSampler`, so the tokens of a
step do not depend on where the run was resumed or on the number of processes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from hmar_core.tokenizer import MultiScaleVQTokenizer

from .batches import StepBatchSampler, image_batches
from .distributed import DistContext
from .loop import to_device_async

__all__ = ["CachedTokens", "OnTheFlyTokens", "encode_keys"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_images(tokenizer: MultiScaleVQTokenizer, images: torch.Tensor) -> torch.Tensor:
    """Images (b, 3, H, W) → flattened token pyramid (b, L) int64 (float32 encoder)."""
    with torch.autocast(device_type=images.device.type, enabled=False):
        return torch.cat(tokenizer.encode(images.float()), dim=1)


def encode_keys(
    tokenizer: MultiScaleVQTokenizer,
    dataset: Dataset,
    keys: Sequence[int | tuple[int, int]],
    ctx: DistContext,
    batch_size: int,
    num_workers: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode the samples ``keys`` of ``dataset`` on all ranks together.

    Returns:
        ``(tokens (len(keys), L) int64, labels (len(keys),) int64)`` on ``ctx.device``, the
        same on every rank.
    """
    share = math.ceil(len(keys) / ctx.world_size)
    mine = list(keys[ctx.rank * share:(ctx.rank + 1) * share])
    mine += [keys[-1]] * (share - len(mine))  # pad so that every rank gathers equal shapes
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                        generator=torch.Generator())
    tokens, labels = [], []
    for images, targets in loader:
        tokens.append(encode_images(tokenizer, images.to(ctx.device)))
        labels.append(targets.to(ctx.device, torch.int64))
    tokens_NL = ctx.all_gather_cat(torch.cat(tokens))[: len(keys)]
    labels_N = ctx.all_gather_cat(torch.cat(labels))[: len(keys)]
    return tokens_NL, labels_N


class CachedTokens:
    """Token pyramids of the whole dataset for ``crops`` crop-epochs, held on the device.

    Args:
        tokenizer: the frozen tokenizer.
        dataset: the training images (``(epoch, index)`` keys).
        sampler: the step sampler.
        crops: number of crop-epochs cached (≥ 1).
        ctx: the process context.
        batch_size: encoding batch per rank.
        num_workers: DataLoader workers for encoding.
    """

    def __init__(self, tokenizer: MultiScaleVQTokenizer, dataset: Dataset,
                 sampler: StepBatchSampler, crops: int, ctx: DistContext, batch_size: int,
                 num_workers: int) -> None:
        if crops < 1:
            raise ValueError(f"crops must be >= 1, got {crops}")
        self.sampler, self.crops = sampler, crops
        count = len(dataset)
        keys = [(crop, index) for crop in range(crops) for index in range(count)]
        logger.info("encoding %d images x %d crops into the token cache", count, crops)
        tokens, labels = encode_keys(tokenizer, dataset, keys, ctx, batch_size, num_workers)
        dtype = torch.int16 if tokenizer.cfg.vocab_size <= 2**15 else torch.int32
        self.tokens = tokens.to(dtype).view(crops, count, -1)  # (crops, N, L)
        self.labels = labels[:count]
        logger.info("token cache: %.1f MiB", self.tokens.numel() * self.tokens.element_size()
                    / 2**20)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (b, L) int64 and labels (b,) of this rank's share of ``step``."""
        keys = torch.tensor(self.sampler.local_keys(step), dtype=torch.int64)  # (b, 2)
        keys = to_device_async(keys, self.tokens.device)  # no host sync on a GPU
        crop, index = keys[:, 0] % self.crops, keys[:, 1]
        return self.tokens[crop, index].long(), self.labels[index]


class OnTheFlyTokens:
    """Load and encode every step's images (for datasets too large to cache).

    Args:
        tokenizer: the frozen tokenizer.
        dataset: the training images.
        sampler: the step sampler (its ``start_step`` is the first step served).
        ctx: the process context.
        num_workers: DataLoader workers.
    """

    def __init__(self, tokenizer: MultiScaleVQTokenizer, dataset: Dataset,
                 sampler: StepBatchSampler, ctx: DistContext, num_workers: int) -> None:
        self.tokenizer = tokenizer
        self.next_step = sampler.start_step
        self.batches = image_batches(dataset, sampler, num_workers, ctx.device)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (b, L) int64 and labels (b,) of ``step`` (steps must come in order)."""
        if step != self.next_step:
            raise ValueError(f"on-the-fly tokens are served in order: expected step "
                             f"{self.next_step}, got {step}")
        self.next_step += 1
        images, labels = next(self.batches)
        return encode_images(self.tokenizer, images), labels
