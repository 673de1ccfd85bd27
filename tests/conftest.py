"""Shared fixtures: the official fixture folder, a tiny random pipeline, launch.py as a module,
a private Gradio cache folder."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(
    os.environ.get("HMAR_OFFICIAL_FIXTURE", ROOT.parent / "shared/fixtures/official-small"))


# The slow tier, kept here so that no test file needs editing: node-id patterns (fnmatch) of the
# tests that take more than about two seconds each on 2 shared CPU cores (whole files where
# most of their tests do). `python -m pytest -m "not slow"` is the fast tier (under a minute);
# CI (`.ci/run`) runs everything. Measured with `--durations`; see docs/TESTING.md.
SLOW_TESTS = (
    "tests/reliability/*",                 # fuzzing, load, kill-and-resume: minutes
    "tests/app/test_browser.py::*",        # drives chromium
    "tests/app/test_e2e_client.py::*",     # the served app through gradio_client
    "tests/app/test_launch.py::*",         # `python launch.py` in a subprocess
    "tests/train/test_train_ddp.py::*",    # torchrun with two processes
    "tests/train/test_train_learning.py::*",
    "tests/train/test_train_resume.py::*",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow tier (``SLOW_TESTS``) and skip ``gpu`` tests without a CUDA device."""
    slow = pytest.mark.slow
    for item in items:
        if any(fnmatch.fnmatchcase(item.nodeid, pattern) for pattern in SLOW_TESTS):
            item.add_marker(slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_pil_pixel_limit():
    """launch.py sets PIL's process-wide decoding limit; keep one test's call from leaking."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = saved


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not (FIXTURE / "reference.pt").is_file():
        pytest.skip(f"official fixture not found at {FIXTURE}")
    return FIXTURE


@pytest.fixture(scope="session")
def reference(fixture_dir: Path) -> dict:
    return torch.load(fixture_dir / "reference.pt", weights_only=True)


@pytest.fixture(scope="session")
def official_pipe(fixture_dir: Path):
    from hmar_core import load_official

    return load_official(fixture_dir / "vqvae.pth", fixture_dir / "hmar.pth")


@pytest.fixture()
def tiny_pipe():
    from hmar_core import Pipeline

    return Pipeline.random(seed=0)


@pytest.fixture(scope="module")
def launch() -> ModuleType:
    """``launch.py`` imported as a module (a fresh copy per test module)."""
    spec = importlib.util.spec_from_file_location("hmar_launch", ROOT / "launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def gradio_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A test's own Gradio cache folder (``GRADIO_TEMP_DIR``); app and reliability tests use it
    automatically."""
    folder = tmp_path / "gradio"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder
