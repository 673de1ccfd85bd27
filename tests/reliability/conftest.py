"""Fixtures of the reliability suite (bad input, load, faults, untrusted checkpoints).

Reduced sizes by default (CI, < 4 minutes on 2 cores); ``HMAR_RELIABILITY_FULL=1`` for the full
sizes. Every test here carries the ``reliability`` marker (``-m "not reliability"`` skips it).
The measured figures go to ``tests/_artifacts/reliability.json`` and the terminal summary.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import json  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from reliability_support import ARTIFACTS, REPORT  # noqa: E402

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability: tests/reliability (HMAR_RELIABILITY_FULL=1 for full size)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if len(REPORT) <= 1:
        return
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "reliability.json"
    path.write_text(json.dumps(REPORT, indent=2, default=dict) + "\n")
    terminalreporter.section("reliability figures")
    for section, values in REPORT.items():
        terminalreporter.write_line(f"{section}: {json.dumps(values, default=dict)}")
    terminalreporter.write_line(f"(written to {path})")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: the 2 CI cores are shared, and threads fighting over them make the
    tiny model 10-100x slower (and timings meaningless). Restored after each module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_pipe():
    """The tiny random model (16×16 images, 10 classes, pyramid 1-2-3-4)."""
    from hmar_core import Pipeline

    return Pipeline.random(seed=0)


@pytest.fixture(autouse=True)
def _own_gradio_cache(gradio_temp_dir: Path) -> Path:
    """Each test caches Gradio files in its own folder (``gradio_temp_dir``, tests/conftest.py)."""
    return gradio_temp_dir
