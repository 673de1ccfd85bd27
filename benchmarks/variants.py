"""What a seed per variant costs: N variants as one batch (the old way) vs N runs of one.

Usage::

    python -m benchmarks.variants --model assets/hmar-emoji64 --variants 4 --repeats 5

Times Generate (``Pipeline.generate(batch_size=N)`` vs
:func:`hmar_core.variants.generate_variants`) and an inpaint of a 64 px picture with a
32×32 mask (``edit(num_variants=N)`` vs :func:`hmar_core.variants.edit_variants`), alternating
the cases so that a busy machine slows them alike; prints the median and the fastest of each.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from hmar_core import EditOptions, Pipeline
from hmar_core.editing import edit
from hmar_core.variants import edit_variants, generate_variants

logger = logging.getLogger(__name__)


def _cases(pipe: Pipeline, count: int) -> dict[str, Callable[[], object]]:
    steps = pipe.sampler_config.steps
    side = pipe.image_size
    picture = (np.random.RandomState(0).rand(side, side, 3) * 255).astype(np.uint8)
    mask = np.zeros((side, side), bool)
    mask[side // 4:3 * side // 4, side // 4:3 * side // 4] = True
    options = EditOptions(seed=1, steps=steps, num_variants=count)
    return {
        f"generate: 1 batch of {count}": lambda: pipe.generate(
            0, seed=1, steps=steps, batch_size=count),
        f"generate: {count} runs of 1": lambda: generate_variants(
            pipe, 0, seed=1, count=count, steps=steps),
        f"inpaint: 1 batch of {count}": lambda: edit(pipe, picture, mask, options),
        f"inpaint: {count} runs of 1": lambda: edit_variants(pipe, picture, mask, options),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="assets/hmar-emoji64")
    parser.add_argument("--variants", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model).to(args.device)
    cases = _cases(pipe, args.variants)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for run in cases.values():
        run()  # warm-up
    for _ in range(args.repeats):
        for name, run in cases.items():
            begin = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - begin)
    logger.info("%s, %s, %d torch threads", args.model, args.device, torch.get_num_threads())
    for name, values in times.items():
        logger.info("%-24s median %.2f s  fastest %.2f s  (%d runs)", name,
                    statistics.median(values), min(values), len(values))


if __name__ == "__main__":
    main()
