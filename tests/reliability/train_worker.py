"""A tiny CPU tokenizer training run for the fault tests (run as a subprocess, not collected).

Usage: ``python tests/reliability/train_worker.py DATA OUT --steps N --interval K
[--resume] [--die-in-write W] [--fsize-limit BYTES] [--log-interval L]``

* ``--die-in-write W``: SIGKILL this process in the middle of its W-th checkpoint write of this
  run (after the first chunk reached the temporary file, before the rename), through the
  trainer's ``checkpoint_write_hook``.
* ``--fsize-limit BYTES``: ``RLIMIT_FSIZE`` for this process with ``SIGXFSZ`` ignored, so a
  write past the limit fails with ``EFBIG`` like on a full disk (no root, no tmpfs needed).

Every optimiser step is logged (``step N: ...``) to stderr, which the tests read back to know
how far a killed run got. One torch thread, so that runs are bitwise reproducible.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import resource
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from hmar_core.config import TokenizerConfig  # noqa: E402
from train.config import OptimConfig, RunConfig, TokenizerTrainConfig  # noqa: E402
from train.tokenizer import main as train_tokenizer  # noqa: E402

#: The ``tiny`` tokenizer (16 px, 4 scales) at half width, as in tests/train.
TOKENIZER = dataclasses.replace(TokenizerConfig.from_name("tiny"), channels=16, norm_groups=8)


def config(args: argparse.Namespace) -> TokenizerTrainConfig:
    run = RunConfig(data_path=str(args.data), out_dir=str(args.out), batch_size=8,
                    steps=args.steps, ckpt_interval=args.interval,
                    log_interval=args.log_interval, device="cpu", seed=0, resume=args.resume,
                    progress_bar=False, tensorboard=False)
    return TokenizerTrainConfig(run=run, tokenizer=TOKENIZER, val_samples=8,
                                optim=OptimConfig(lr=2e-3, weight_decay=0.0))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--interval", type=int, required=True)
    parser.add_argument("--log-interval", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--die-in-write", type=int, default=0)
    parser.add_argument("--fsize-limit", type=int, default=0)
    args = parser.parse_args()
    if args.fsize_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize_limit, args.fsize_limit))
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    writes = []

    def hook(written: int, total: int) -> None:
        if not writes or written <= writes[-1]:
            writes.append(0)  # the first chunk of a new checkpoint
        writes[-1] = written
        if len(writes) == args.die_in_write:
            logging.getLogger("worker").info("dying in checkpoint write %d at %d of %d bytes",
                                             len(writes), written, total)
            os.kill(os.getpid(), signal.SIGKILL)

    result = train_tokenizer(config(args), checkpoint_write_hook=hook)
    logging.getLogger("worker").info("finished at step %d", result.step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
