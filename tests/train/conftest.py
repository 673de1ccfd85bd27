"""Session fixtures of the trainer tests: the tiny image set and small trained runs.

The trainer tests run torch on one thread (subprocesses get ``OMP_NUM_THREADS=1``): at these
tiny sizes a second thread gains little, and on a shared, busy 2-core machine OpenMP threads
that wait for each other make runs many times slower.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from train_helpers import build_image_root, hmar_config, one_thread, tokenizer_config


@pytest.fixture(autouse=True)
def _torch_one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/{train,val}/<class>/*.png`` at 16×16 plus a ``labels.json`` with titles."""
    return build_image_root(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def tokenizer_run(image_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tokenizer trained for 200 steps (its result: PSNR history and export folder)."""
    from train.tokenizer import main

    out = tmp_path_factory.mktemp("tokenizer_run")
    with one_thread():
        return main(tokenizer_config(image_root, out))


@pytest.fixture(scope="session")
def stage1_run(image_root: Path, tokenizer_run, tmp_path_factory: pytest.TempPathFactory):
    """HMAR stage 1 for 150 steps on the trained tokenizer."""
    from train.hmar import main

    out = tmp_path_factory.mktemp("stage1_run")
    with one_thread():
        return main(hmar_config(image_root, out, tokenizer_run.export_dir, sample_interval=75))
