"""Shared fixtures: the official fixture folder, a tiny random pipeline, launch.py as a module,
a private Gradio cache folder."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(
    os.environ.get("HMAR_OFFICIAL_FIXTURE", ROOT.parent / "shared/fixtures/official-small"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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

    return load_official(fixture_dir / "vqvae.pth", fixture_dir / "hmar.pth",
                         engine="reference")


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
