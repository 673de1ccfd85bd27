"""launch.py: flags, device choice, model loading with the random-model fallback, launch()."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_local_and_private(launch):
    args = launch.parse_args([])
    assert args.host == "127.0.0.1" and not args.share and not args.no_browser
    assert args.checkpoint is None and args.vae is None and args.port is None
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


def test_flag_errors(launch):
    with pytest.raises(SystemExit):
        launch.parse_args(["--vae", "a.pth"])
    with pytest.raises(SystemExit):
        launch.parse_args(["--checkpoint", "x", "--vae", "a.pth", "--hmar", "b.pth"])


def test_device_choice(launch):
    assert launch.pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert launch.pick_device(None).type == expected


def test_random_fallback_with_warning(launch, monkeypatch, tmp_path):
    monkeypatch.setattr(launch, "DEFAULT_CHECKPOINT", tmp_path / "missing")
    pipeline, warning = launch.load_pipeline(launch.parse_args([]), torch.device("cpu"))
    assert warning and "not bundled" in warning
    assert pipeline.image_size == 16


def test_loads_our_folder(launch, app_pipe, monkeypatch, tmp_path):
    folder = tmp_path / "model"
    app_pipe.save_pretrained(folder)
    monkeypatch.setattr(launch, "DEFAULT_CHECKPOINT", folder)  # the bundled default
    pipeline, warning = launch.load_pipeline(launch.parse_args([]), torch.device("cpu"))
    assert warning is None and pipeline.num_classes == app_pipe.num_classes
    args = launch.parse_args(["--checkpoint", str(folder)])
    assert launch.load_pipeline(args, torch.device("cpu"))[1] is None


def test_main_launches_with_safe_settings(launch, monkeypatch, tmp_path):
    import app

    calls = {}

    class FakeDemo:
        def launch(self, **kwargs):
            calls.update(kwargs)

    def fake_build(pipeline, **kwargs):
        calls["build"] = kwargs
        return FakeDemo()

    monkeypatch.setattr(launch, "DEFAULT_CHECKPOINT", tmp_path / "missing")
    monkeypatch.setattr(app, "build_demo", fake_build)
    monkeypatch.setattr(app, "calibrate", lambda pipeline: app.Timing(0.1, 0.01))
    launch.main(["--no-browser", "--port", "7999", "--device", "cpu"])
    assert calls["server_name"] == "127.0.0.1" and calls["server_port"] == 7999
    assert calls["inbrowser"] is False and calls["share"] is False
    assert calls["max_file_size"] == app.MAX_FILE_SIZE
    assert "not bundled" in calls["build"]["warning"]
    assert calls["build"]["timing"] == app.Timing(0.1, 0.01)


def test_python_launch_py_serves_the_app(tmp_path):
    """What a newcomer runs: ``python launch.py`` (here without opening a browser)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "launch.py", "--no-browser", "--port", str(port), "--device", "cpu"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as reply:
                    page = reply.read().decode()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"launch.py did not serve: {process.communicate()[0][-2000:]}")
                time.sleep(0.5)
        assert "HMAR Studio" in page
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "Traceback" not in output
    assert "WARNING" in output or "loading" in output
