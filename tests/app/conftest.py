"""Fixtures of the app tests: a tiny random pipeline, a per-test Gradio temp dir, a served app."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import socket  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "_artifacts"


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def app_pipe():
    """The tiny random model (16×16 images, 10 classes, pyramid 1-2-3-4)."""
    from hmar_core import Pipeline

    return Pipeline.random(seed=0)


@pytest.fixture(autouse=True)
def _own_gradio_cache(gradio_temp_dir: Path) -> Path:
    """Each test caches Gradio files in its own folder (``gradio_temp_dir``, tests/conftest.py)."""
    return gradio_temp_dir


@pytest.fixture()
def launch_app(gradio_temp_dir: Path) -> Iterator[Callable[..., str]]:
    """``launch_app(pipeline, **build_kwargs) -> url``: serve the app in-process on a free port.

    Every app launched this way is closed when the test ends.
    """
    import app

    demos = []

    def launch(pipeline: object, **build_kwargs: object) -> str:
        demo = app.build_demo(pipeline, **build_kwargs)
        demos.append(demo)
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(),
                                prevent_thread_lock=True, quiet=True,
                                max_file_size=app.MAX_FILE_SIZE)
        return url

    try:
        yield launch
    finally:
        for demo in demos:
            demo.close()


@pytest.fixture()
def served_app(app_pipe, launch_app: Callable[..., str]) -> str:
    """The app on the tiny random model; its URL."""
    return launch_app(app_pipe, warning="tiny random test model")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``tests/_artifacts/`` (git-ignored): screenshots and other test outputs."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
