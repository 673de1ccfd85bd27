"""Token pyramids for HMAR training, from a frozen tokenizer.

Shape legend: N = dataset size, b = local batch, L = tokens of the pyramid (sum of pn²).

Two sources with the same interface, ``batch(step) -> (tokens (b, L) int64, labels (b,))``:

* :class:`OnTheFlyTokens` — load the step's images (DataLoader workers) and encode them.
* :class:`CachedTokens` — encode the dataset once for ``crops`` crop-epochs (epoch e of the
  stream uses crop e mod ``crops``) and index the cache; for small datasets this removes the
  tokenizer from the step entirely. Every rank encodes a share and the shares are gathered, so
  all ranks hold the same cache. With a cache ``path`` the tokens are written there
  (safetensors) and a later run (the next stage, a resumed run, the next round) loads them
  instead of encoding again, after re-encoding a few probe samples and finding them equal;
  any difference (another tokenizer, dataset, crop seed or crop count) re-encodes and
  rewrites the file.

Both take their batches from a :class:`~train.batches.StepBatchSampler`, so the tokens of a
step do not depend on where the run was resumed or on the number of processes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from hmar_core.tokenizer import MultiScaleVQTokenizer

from .batches import StepBatchSampler, image_batches
from .distributed import DistContext
from .loop import to_device_async

__all__ = ["CachedTokens", "OnTheFlyTokens", "encode_keys"]

logger = logging.getLogger(__name__)

#: Samples re-encoded to check a cache file (spread over crops and images).
CACHE_PROBES = 32


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
        path: a cache file to load (when it matches, checked on probe samples) or to write
            (rank 0) after encoding; ``None`` encodes and keeps nothing.
    """

    def __init__(self, tokenizer: MultiScaleVQTokenizer, dataset: Dataset,
                 sampler: StepBatchSampler, crops: int, ctx: DistContext, batch_size: int,
                 num_workers: int, path: str | Path | None = None) -> None:
        if crops < 1:
            raise ValueError(f"crops must be >= 1, got {crops}")
        self.sampler, self.crops = sampler, crops
        count = len(dataset)
        dtype = torch.int16 if tokenizer.cfg.vocab_size <= 2**15 else torch.int32
        encode = (tokenizer, dataset, ctx, batch_size, num_workers)
        loaded = None if path is None else _load_cache(Path(path), crops, count, dtype, *encode)
        if loaded is not None:
            self.tokens, self.labels = loaded[0].to(ctx.device), loaded[1].to(ctx.device)
            logger.info("token cache loaded from %s (%d images x %d crops)", path, count, crops)
        else:
            keys = [(crop, index) for crop in range(crops) for index in range(count)]
            logger.info("encoding %d images x %d crops into the token cache", count, crops)
            tokens, labels = encode_keys(tokenizer, dataset, keys, ctx, batch_size, num_workers)
            self.tokens = tokens.to(dtype).view(crops, count, -1)  # (crops, N, L)
            self.labels = labels[:count]
            if path is not None and ctx.is_main:
                _save_cache(Path(path), self.tokens, self.labels)
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


def _probe_keys(crops: int, count: int) -> list[tuple[int, int]]:
    """Up to :data:`CACHE_PROBES` keys spread over every crop and the whole dataset."""
    total = crops * count
    probes = min(CACHE_PROBES, total)
    picks = sorted({round(i * (total - 1) / max(probes - 1, 1)) for i in range(probes)})
    return [(flat % crops, flat // crops) for flat in picks]


def _load_cache(path: Path, crops: int, count: int, dtype: torch.dtype,
                tokenizer: MultiScaleVQTokenizer, dataset: Dataset, ctx: DistContext,
                batch_size: int, num_workers: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (tokens (crops, N, L), labels (N,)) of ``path`` if it exists and matches:
    same shape, dtype and labels, and the probe samples encode to the cached tokens. Else
    ``None`` (logged), and the caller encodes."""
    if not path.exists():
        return None
    try:
        stored = load_file(str(path))
        tokens, labels = stored["tokens"], stored["labels"]
    except Exception as err:  # noqa: BLE001 (an unreadable cache is re-made, not fatal)
        logger.warning("token cache %s unreadable (%s: %s): encoding again", path,
                       type(err).__name__, err)
        return None
    reason = ""
    if tokens.dim() != 3 or tuple(tokens.shape[:2]) != (crops, count) or tokens.dtype != dtype:
        reason = (f"it holds {tuple(tokens.shape)} {tokens.dtype} tokens, this run needs "
                  f"({crops}, {count}, L) {dtype}")
    else:
        keys = _probe_keys(crops, count)
        fresh, fresh_labels = encode_keys(tokenizer, dataset, keys, ctx, batch_size,
                                          num_workers)
        crop_ids = torch.tensor([c for c, _ in keys])
        index_ids = torch.tensor([i for _, i in keys])
        if fresh.shape[1] != tokens.shape[2]:
            reason = f"{tokens.shape[2]} tokens per image, the tokenizer gives {fresh.shape[1]}"
        elif not torch.equal(labels[index_ids].long(), fresh_labels.cpu()):
            reason = "its labels differ from the dataset's"
        elif not torch.equal(tokens[crop_ids, index_ids].long(), fresh.cpu()):
            reason = ("probe samples encode to other tokens (another tokenizer, dataset or "
                      "crop seed)")
    if reason:
        logger.warning("token cache %s does not match this run (%s): encoding again", path,
                       reason)
        return None
    return tokens, labels


def _save_cache(path: Path, tokens: torch.Tensor, labels: torch.Tensor) -> None:
    """Write the cache atomically (a partly written file is never read as a cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file({"tokens": tokens.cpu().contiguous(), "labels": labels.cpu().contiguous()},
              str(partial), metadata={"format": "hmar-token-cache"})
    os.replace(partial, path)
    logger.info("token cache written to %s", path)
