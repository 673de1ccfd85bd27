"""Training feedback: a tqdm bar, TensorBoard scalars, log lines, and PNG image grids.

Only rank 0 reports; on other ranks a :class:`Reporter` does nothing. TensorBoard is used when
``torch.utils.tensorboard`` can be imported (the ``tensorboard`` package), otherwise scalars go
to the log only. Image grids are written with Pillow (no torchvision needed).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .distributed import DistContext

__all__ = ["Reporter", "image_grid", "save_image_grid"]

logger = logging.getLogger(__name__)


def image_grid(images: torch.Tensor, nrow: int, padding: int = 2) -> np.ndarray:
    """Tile images (N, 3, H, W) in [0, 1] into one uint8 (rows·H', nrow·W', 3) array."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    count, _, height, width = images.shape
    nrow = max(1, min(nrow, count))
    rows = math.ceil(count / nrow)
    cell_h, cell_w = height + padding, width + padding
    canvas = np.full((rows * cell_h + padding, nrow * cell_w + padding, 3), 255, np.uint8)
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels_np = pixels.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)
    for i in range(count):
        top, left = padding + (i // nrow) * cell_h, padding + (i % nrow) * cell_w
        canvas[top:top + height, left:left + width] = pixels_np[i]
    return canvas


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int) -> Path:
    """Write :func:`image_grid` of ``images`` as a PNG (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, nrow)).save(path)
    return path


class Reporter:
    """Progress bar, scalars and images of one run (active on rank 0 only).

    Args:
        ctx: the process context.
        out_dir: run folder (TensorBoard events go to ``out_dir/tb``, images to
            ``out_dir/samples``).
        total_steps: steps of the run (bar length).
        start_step: first step of this process (after a resume).
        tensorboard: write TensorBoard events when available.
        progress_bar: show a tqdm bar.
    """

    def __init__(self, ctx: DistContext, out_dir: str | Path, total_steps: int,
                 start_step: int = 0, *, tensorboard: bool = True,
                 progress_bar: bool = True) -> None:
        self.active = ctx.is_main
        self.out_dir = Path(out_dir)
        self.writer: Any = None
        self.bar: Any = None
        self._last_time = time.perf_counter()
        self._samples = 0
        if not self.active:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed; scalars go to the log only")
            else:
                self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=start_step)
        if progress_bar:
            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True,
                            unit="step", leave=False)

    def set_total(self, total_steps: int) -> None:
        """Change the bar length (after the schedule was calibrated to a time budget)."""
        if self.bar is not None:
            self.bar.total = total_steps
            self.bar.refresh()

    def step(self, samples: int, loss: float | None = None) -> None:
        """Advance the bar by one step of ``samples`` images (global) with its loss."""
        if not self.active:
            return
        self._samples += samples
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log ``values`` (and the throughput since the last call) at ``step``."""
        if not self.active:
            return
        if self._samples:
            now = time.perf_counter()
            values = {**values,
                      "perf/images_per_s": self._samples / max(now - self._last_time, 1e-9)}
            self._last_time, self._samples = now, 0
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
        if self.bar is not None and "train/loss" in values:
            self.bar.set_postfix(loss=f"{values['train/loss']:.4f}",
                                 img_s=f"{values.get('perf/images_per_s', 0.0):.0f}")
        text = " ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in values.items())
        logger.info("step %d: %s", step, text)

    def images(self, step: int, name: str, images: torch.Tensor, nrow: int) -> Path | None:
        """Save a PNG grid ``samples/<name>_<step>.png`` (and to TensorBoard)."""
        if not self.active:
            return None
        path = save_image_grid(images, self.out_dir / "samples" / f"{name}_{step:08d}.png", nrow)
        if self.writer is not None:
            self.writer.add_image(name, image_grid(images, nrow), step, dataformats="HWC")
        logger.info("wrote %s", path)
        return path

    def finish_bar(self) -> None:
        """Close the progress bar (the final evaluation and export only log)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.finish_bar()
        if self.writer is not None:
            self.writer.close()
