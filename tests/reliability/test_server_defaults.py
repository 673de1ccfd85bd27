"""Server defaults of ``launch.py``: loopback unless asked, a login for LAN use, an upload cap,
no analytics, and pictures refused from their header before Gradio decodes them.

The flags are parsed by ``launch.parse_args`` and turned into ``demo.launch()`` keyword
arguments by ``launch.launch_options`` (what ``main`` uses); the served tests launch the app
in-process with exactly those arguments (on 127.0.0.1, never opening a browser).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from reliability_support import PeakRss, record

import app
from hmar_core import Pipeline


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_defaults_are_loopback_capped_private_and_without_analytics(launch):
    args = launch.parse_args([])
    options = launch.launch_options(args, app.MAX_FILE_SIZE)
    assert options["server_name"] == "127.0.0.1"
    assert options["share"] is False and options["auth"] is None
    assert options["max_file_size"] == app.MAX_FILE_SIZE == "20mb"
    assert options["inbrowser"] is True  # a local user gets a tab; --no-browser turns it off
    assert launch.launch_options(launch.parse_args(["--no-browser"]), "1mb")["inbrowser"] is False
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


def test_logins_from_flags_and_file(launch, tmp_path):
    logins = tmp_path / "logins.txt"
    logins.write_text("# who may use the studio\ncarol:pass word\n\n dave : x:y \n")
    args = launch.parse_args(["--host", "0.0.0.0", "--auth", "alice:s3cret",
                              "--auth", "bob:a:b", "--auth-file", str(logins)])
    expected = [("alice", "s3cret"), ("bob", "a:b"), ("carol", "pass word"), ("dave", " x:y")]
    assert args.logins == expected
    options = launch.launch_options(args, app.MAX_FILE_SIZE)
    assert options["server_name"] == "0.0.0.0" and options["auth"] == expected


@pytest.mark.parametrize("flags", [["--auth", "alice"], ["--auth", ":pw"], ["--auth", "bob:"],
                                   ["--auth-file", "/nonexistent/logins.txt"]])
def test_bad_logins_are_refused_at_start(launch, flags):
    with pytest.raises(SystemExit):
        launch.parse_args(flags)


def test_lan_without_a_login_warns(launch, caplog):
    with caplog.at_level(logging.WARNING, logger="launch"):
        launch.launch_options(launch.parse_args(["--host", "0.0.0.0"]), "1mb")
    assert "without a login" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="launch"):
        launch.launch_options(launch.parse_args(["--host", "0.0.0.0", "--auth", "a:b"]), "1mb")
        launch.launch_options(launch.parse_args([]), "1mb")
    assert "without a login" not in caplog.text


@pytest.fixture()
def served_with(launch) -> Iterator:
    """``served_with(flags) -> url``: the app launched with launch_options(parse_args(flags)),
    always on 127.0.0.1 and a free port, without a browser. ``served_with.demos`` lists the
    launched ``gr.Blocks``."""
    demos = []

    def start(flags: list[str]) -> str:
        args = launch.parse_args(["--no-browser", "--port", str(free_port()), *flags])
        options = launch.launch_options(args, app.MAX_FILE_SIZE)
        assert options["server_name"] == "127.0.0.1"
        demo = app.build_demo(Pipeline.random(seed=0))
        demos.append(demo)
        _, url, _ = demo.launch(**options, prevent_thread_lock=True, quiet=True)
        return url

    start.demos = demos
    try:
        yield start
    finally:
        for demo in demos:
            demo.close()


def test_a_login_protects_every_route(served_with):
    url = served_with(["--auth", "alice:pw"])
    for route in ("config", "gradio_api/info", "gradio_api/file=/etc/passwd"):
        assert httpx.get(url + route, timeout=30).status_code == 401, route
    call = httpx.post(url + "gradio_api/call/generate",
                      json={"data": [-1, 1, 1.5, 0, 0.0, 1, 1, False]}, timeout=30)
    assert call.status_code == 401
    upload = httpx.post(url + "gradio_api/upload", files={"files": ("a.png", b"x")}, timeout=30)
    assert upload.status_code == 401
    with pytest.raises(Exception, match="credentials were not provided|login"):
        Client(url, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        Client(url, verbose=False, auth=("alice", "wrong"))
    client = Client(url, verbose=False, auth=("alice", "pw"))
    try:
        seed = client.predict(api_name="/random_seed")  # a string: the seed box keeps digits
        assert isinstance(seed, str) and seed.isdigit()
    finally:
        client.close()


def test_uploads_above_the_cap_are_refused(served_with):
    url = served_with([])
    big = httpx.post(url + "gradio_api/upload",
                     files={"files": ("big.png", b"\0" * (21 * 2**20), "image/png")}, timeout=60)
    assert big.status_code == 413
    small = httpx.post(url + "gradio_api/upload",
                       files={"files": ("small.png", b"\0" * 1000, "image/png")}, timeout=60)
    assert small.status_code == 200


def grey_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black PNG (compresses to ~0.1 % of its pixels)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
                     + chunk(b"IEND", b""))
    return path


def test_a_small_file_declaring_a_huge_picture_is_refused_before_decoding(launch, served_with,
                                                                           tmp_path):
    """A ~50 KB PNG of 7000 × 7000 (49 MP, above the app's 40 MP limit): with launch.py's
    decoding limit PIL refuses it from the header inside Gradio's preprocessing; without it,
    Gradio decodes it (~0.6 GiB for the RGBA arrays) before the app refuses it."""
    from PIL import Image as PILImage

    picture = grey_png(tmp_path / "huge.png", 7000, 7000)
    layer = tmp_path / "layer.png"
    Image.fromarray(np.zeros((16, 16, 4), np.uint8)).save(layer)
    default = PILImage.MAX_IMAGE_PIXELS
    launch.limit_image_decoding(app.handlers.MAX_PIXELS)
    try:
        assert PILImage.MAX_IMAGE_PIXELS * 2 == app.handlers.MAX_PIXELS
        url = served_with([])
        client = Client(url, verbose=False)
        editor = {"background": handle_file(picture), "layers": [handle_file(layer)],
                  "composite": None}
        try:
            with PeakRss() as probe:
                refused = client.predict(editor, -1, 0, 1, 1.5, 0, 0.0, 1, 1, False,
                                         "Painted area", 1, 8, False, 32, api_name="/inpaint")
                assert "too large" in str(refused[3]), refused[3]  # the app's status line
            again = client.predict(-1, 1, 1.5, 0, 0.0, 1, 1, False, api_name="/generate")
            assert str(again[3]).startswith("Done")  # the server carries on
        finally:
            client.close()
    finally:
        PILImage.MAX_IMAGE_PIXELS = default
    record("security", bomb_upload_kib=picture.stat().st_size // 1024,
           bomb_refusal_peak_mib=round(probe.growth))
    if probe.supported:
        assert probe.growth < 150, f"peak +{probe.growth:.0f} MiB while refusing"


def _new_sessions(url: str, count: int) -> None:
    """``count`` API calls, each from a new session (``/call/`` gives every call its own)."""
    with httpx.Client(timeout=30) as http:
        for _ in range(count):
            event = http.post(url + "gradio_api/call/random_seed", json={"data": []}).json()
            reply = http.get(url + f"gradio_api/call/random_seed/{event['event_id']}").text
            assert "event: complete" in reply, reply[-300:]


def test_per_session_state_is_bounded(launch, served_with):
    """Every visitor (every API client) gets a server-side session that API clients never
    close; Gradio keeps 10000 of them by default. With launch.py's capacity the number of
    sessions, and the memory they hold, stops growing."""
    import gc

    from reliability_support import rss_mib

    capacity = launch.SESSION_CAPACITY
    url = served_with([])
    holder = served_with.demos[-1].server_app.state_holder
    assert holder.capacity == capacity
    _new_sessions(url, capacity)
    gc.collect()
    full = rss_mib()
    _new_sessions(url, 2 * capacity)
    gc.collect()
    growth = rss_mib() - full
    assert len(holder.session_data) == capacity
    record("security", session_capacity=capacity,
           rss_growth_over_2x_capacity_more_sessions_mib=round(growth, 1))
    assert growth < 16, f"+{growth:.0f} MiB for {2 * capacity} sessions beyond the capacity"


def test_share_without_a_login_is_refused(launch, capsys):
    """``--share`` publishes a public gradio.live link: without a login it used to start
    silently (issue 17, item 5); now it refuses to start and says what to add."""
    with pytest.raises(SystemExit) as exit_info:
        launch.parse_args(["--share"])
    assert exit_info.value.code != 0
    assert "--auth" in capsys.readouterr().err
    options = launch.launch_options(launch.parse_args(["--share", "--auth", "a:b"]), "1mb")
    assert options["share"] is True and options["auth"] == [("a", "b")]


def _damaged_folder(root: Path) -> Path:
    folder = root / "damaged"
    folder.mkdir()
    (folder / "config.json").write_text("[" * 200_000)  # nested beyond any recursion limit
    return folder


@pytest.mark.parametrize("flags", [
    ["--checkpoint", "{tmp}/missing-folder"],
    ["--checkpoint", "{tmp}/damaged"],
    ["--vae", "{tmp}/missing.pth", "--hmar", "{tmp}/missing2.pth"],
    ["--device", "no-such-device"],
])
def test_a_bad_model_or_device_stops_launch_with_one_line(flags, tmp_path):
    """launch.py on a missing folder, a damaged config, missing .pth files or an unknown
    device: exit code != 0 and one line on stderr, no traceback (issue 17, item 13)."""
    import subprocess
    import sys

    _damaged_folder(tmp_path)
    argv = [flag.format(tmp=tmp_path) for flag in flags]
    done = subprocess.run([sys.executable, str(Path(app.__file__).parents[1] / "launch.py"),
                           "--no-browser", "--log-level", "ERROR", *argv],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("launch.py: "), done.stderr[-2000:]
