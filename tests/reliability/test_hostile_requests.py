"""Hostile requests against the served app (issue 17, items 1-5 and 15).

The app is launched in-process on 127.0.0.1 with ``launch.py``'s own settings
(``launch_options``, which installs :mod:`app.request_limits`); requests are real HTTP
(``httpx``, ``gradio_client``, a raw socket for the aborted upload). Each test would fail on the
code before its fix: the old server answered these requests by doing the work (allocating,
storing, decoding, writing) or with a crash message and a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio.components.image_editor import EditorData
from gradio_client import Client, handle_file
from PIL import Image
from reliability_support import PeakRss, record

import app
from app.editor_component import BLOB_STORE_IDS, BlobStore, BoundedImageEditor
from app.imaging import (
    HEATMAP_MAX_PIXELS,
    PREVIEW_MAX_PIXELS,
    ConfidenceTile,
    confidence_overlay,
    preview_strip,
)
from app.limits import MAX_UPLOAD_FILES
from hmar_core import Pipeline

INPAINT_CONTROLS = (-1, 0, 1, 1.5, 0, 0.0, 1, 1, False, "Painted area", 1, 8, False, 32)


def assert_refused(output: tuple, match: str) -> None:
    """The app refused the request with its own message in the status line (no result: a
    status line covers no output, unlike an error)."""
    status = str(output[3])
    assert "Not run" in status and re.search(match, status), status


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """One launched app: its URL and its ``gr.Blocks``."""

    def __init__(self, url: str, demo: Any) -> None:
        self.url = url
        self.demo = demo

    @property
    def editor(self) -> BoundedImageEditor:
        return next(block for block in self.demo.blocks.values()
                    if isinstance(block, BoundedImageEditor))

    def fn_index(self, name: str) -> int:
        return next(fn._id for fn in self.demo.fns.values() if fn.name == name)


@pytest.fixture()
def served(launch) -> Iterator[Served]:
    args = launch.parse_args(["--no-browser", "--port", str(free_port())])
    demo = app.build_demo(Pipeline.random(seed=0))
    _, url, _ = demo.launch(**launch.launch_options(args, app.MAX_FILE_SIZE),
                            prevent_thread_lock=True, quiet=True)
    try:
        yield Served(url, demo)
    finally:
        demo.close()


def png(path: Path, width: int, height: int, mode: str = "RGBA") -> Path:
    Image.new(mode, (width, height)).save(path)
    return path


def assert_still_serves(url: str) -> None:
    client = Client(url, verbose=False)
    try:
        done = client.predict(-1, 1, 1.5, 0, 0.0, 1, 1, False, api_name="/generate")
        assert str(done[3]).startswith("Done")
    finally:
        client.close()


# ------------------------------------------------------------------ item 1: thin pictures
@pytest.mark.parametrize("size", [(600, 1), (10000, 1), (16384, 1), (1, 16384)])
@pytest.mark.parametrize("variants", [1, 8])
def test_preview_strips_are_bounded_by_total_pixels(size, variants):
    """A 10000×1 picture made a 2.56 M × 256 px strip at every scale (+7.5 GB)."""
    strip = preview_strip([Image.new("RGB", size)] * variants)
    assert strip.width * strip.height <= PREVIEW_MAX_PIXELS


def test_heatmap_overlays_are_bounded_by_total_pixels():
    image = Image.new("RGB", (1500, 1000), "white")
    tile = ConfidenceTile(np.array([[0.0, 1.0], [1.0, 0.0]]), 0, -250, 1500)
    overlay = confidence_overlay(image, [tile])
    assert overlay.width * overlay.height <= HEATMAP_MAX_PIXELS
    assert abs(overlay.width / overlay.height - 1.5) < 0.01  # same shape, scaled down
    top_left = overlay.getpixel((0, 0))
    assert top_left != (255, 255, 255)  # the map is still drawn where its tile lies


@pytest.mark.parametrize("size", [(10000, 1), (16384, 1), (1, 5000)])
def test_thin_pictures_are_refused_before_any_work(served, tmp_path, size):
    picture = png(tmp_path / "thin.png", *size, mode="RGB")
    layer = png(tmp_path / "layer.png", *size)
    client = Client(served.url, verbose=False)
    editor = {"background": handle_file(picture), "layers": [handle_file(layer)],
              "composite": None}
    try:
        with PeakRss() as probe:
            assert_refused(client.predict(editor, *INPAINT_CONTROLS, api_name="/inpaint"),
                               "too elongated")
    finally:
        client.close()
    record("hostile", **{f"thin_{size[0]}x{size[1]}_peak_mib": round(probe.growth, 1)})
    if probe.supported:
        assert probe.growth < 64, f"+{probe.growth:.0f} MiB to refuse a {size} picture"
    assert_still_serves(served.url)


# --------------------------------------------------------------- item 2: accept_blobs
def blob_call(served: Served, index: str = "0", key: str = "k", kind: str = "layer",
              files: int = 1, size: int = 100) -> httpx.Response:
    fields = {"session_hash": "hostile", "component_id": str(served.editor._id),
              "fn_name": "accept_blobs", "type": kind, "index": index, "id": key}
    uploads = [("file", (f"{i}.png", b"\0" * size, "image/png")) for i in range(files)]
    return httpx.post(served.url + "gradio_api/component_server", data=fields, files=uploads,
                      timeout=60)


@pytest.mark.parametrize("change", [
    {"index": "20000000"}, {"index": "-1"}, {"index": "x"}, {"kind": "anything"},
    {"key": "k" * 65}, {"files": 2},
])
def test_accept_blobs_refuses_what_the_ui_never_sends(served, change):
    """``index=20000000`` allocated a list of that length; 1,000 files per call were read."""
    answer = blob_call(served, **change)
    assert answer.status_code == 400, answer.text
    assert len(served.editor.blob_storage) == 0


def test_accept_blobs_keeps_a_bounded_store(served):
    """Every call stored up to 20 MB under a new client-chosen id, forever."""
    for number in range(BLOB_STORE_IDS + 40):
        assert blob_call(served, key=f"id-{number}", size=1000).status_code == 200
    store = served.editor.blob_storage
    assert len(store) == BLOB_STORE_IDS
    assert "id-0" not in store and f"id-{BLOB_STORE_IDS + 39}" in store  # oldest out first
    assert store.total_bytes == BLOB_STORE_IDS * 1000
    record("hostile", blob_store_ids=BLOB_STORE_IDS, blob_store_bytes=store.max_bytes)
    assert_still_serves(served.url)


# ---------------------------------------------------------------- item 3: editor layers
def test_more_layers_than_the_ui_sends_are_refused_before_decoding(served, tmp_path):
    """One 35 KB transparent 3000×3000 PNG listed N times was decoded N times (36 MB each)."""
    picture = png(tmp_path / "picture.png", 64, 64, mode="RGB")
    layer = png(tmp_path / "layer.png", 3000, 3000)
    client = Client(served.url, verbose=False)
    editor = {"background": handle_file(picture), "layers": [handle_file(layer)] * 8,
              "composite": None}
    try:
        with PeakRss() as probe:
            assert_refused(client.predict(editor, *INPAINT_CONTROLS, api_name="/inpaint"),
                               "brush layer")
    finally:
        client.close()
    record("hostile", layers_8x_3000px_peak_mib=round(probe.growth, 1))
    if probe.supported:
        assert probe.growth < 64, f"+{probe.growth:.0f} MiB to refuse 8 layers"
    assert_still_serves(served.url)


# ------------------------------------------------------------ item 4: uploads per request
def test_an_upload_request_is_capped_in_files_and_bytes(served, gradio_temp_dir):
    def upload(count: int, size: int) -> httpx.Response:
        files = [("files", (f"{i}.png", b"\0" * size, "image/png")) for i in range(count)]
        return httpx.post(served.url + "gradio_api/upload", files=files, timeout=120)

    before = {path for path in gradio_temp_dir.rglob("*") if path.is_file()}
    assert upload(MAX_UPLOAD_FILES + 1, 1000).status_code == 413  # too many files
    assert upload(6, 4 * 2**20).status_code == 413  # 24 MiB in 6 files of 4 MiB
    after = {path for path in gradio_temp_dir.rglob("*") if path.is_file()}
    assert after == before, sorted(str(path) for path in after - before)
    assert upload(MAX_UPLOAD_FILES, 1000).status_code == 200
    record("hostile", upload_files_per_request=MAX_UPLOAD_FILES,
           upload_request_bytes=app.request_limits.MAX_REQUEST_BYTES)


def test_an_aborted_upload_leaves_no_file(served, gradio_temp_dir):
    """The client announces 8 MiB, sends 2 MiB of one file, and closes its side; before,
    Gradio's parser had already created the file's temporary copy and never removed it."""
    host, port = served.url.removeprefix("http://").strip("/").split(":")
    boundary = "hostileboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
    request = (f"POST /gradio_api/upload HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
               f"Content-Length: {8 * 2**20}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(request + head + b"\0" * (2 * 2**20))
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):  # the server has finished with the request when it closes
            pass
    leftovers = [path for path in gradio_temp_dir.rglob("*") if path.is_file()]
    assert not leftovers, leftovers
    assert_still_serves(served.url)


# -------------------------------------------------- item 5: internal events, malformed calls
def join(served: Served, fn_index: int, data: Any, event_data: Any = None) -> httpx.Response:
    body = {"data": data, "fn_index": fn_index, "session_hash": "hostile",
            "event_data": event_data}
    return httpx.post(served.url + "gradio_api/queue/join", json=body, timeout=60)


def completion(served: Served) -> dict:
    with httpx.stream("GET", served.url + "gradio_api/queue/data?session_hash=hostile",
                      timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("no completion")


def test_malformed_event_calls_get_a_4xx_and_one_log_line(served, capfd, caplog):
    """Internal events by fn_index with wrong values, unknown indices, the Stop button's
    client-side event, a select without its data, a class or side that is not offered: each
    used to print a full traceback (and ``remember_selection`` answered "'NoneType' object is
    not subscriptable"). A seed is free text now (a text box keeps all 19 digits), so a bad seed
    is the handler's status line, not a refused call."""
    select = served.fn_index("remember_selection")
    calls = [(select, [], None), (select, [], {"index": None}), (999, [], None),
             (served.fn_index("toggle_heatmap"), [], None),
             (served.fn_index("<lambda>"), ["x", None], None),
             (served.fn_index("edit_result"), [None, None, None], None),
             (served.fn_index("generate"), ["x"], None),
             (served.fn_index("generate"), [None, "cat", 1, 1.5, 0, 0.0, 7, 1, False], None),
             (served.fn_index("outpaint"), [None, None, ["Nowhere"], 25, -1, 1, 1.5, 0, 0.0,
                                            7, 1, False, 1, 8, False, 32], None)]
    no_backend = [fn._id for fn in served.demo.fns.values() if fn.fn is None]
    calls += [(index, [None] * 1, None) for index in no_backend]
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="app"):
        for index, data, event_data in calls:
            answer = join(served, index, data, event_data)
            assert answer.status_code in (404, 422), (index, answer.status_code, answer.text)
    refused = [r for r in caplog.records if r.getMessage().startswith("refused a call")]
    assert len(refused) == len(calls)
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in refused)
    assert "Traceback" not in capfd.readouterr().err
    record("hostile", malformed_calls_refused=len(calls))
    with caplog.at_level(logging.ERROR, logger="app"):  # a Gradio route's own KeyError
        caplog.clear()
        answer = httpx.post(served.url + "gradio_api/component_server",
                            data={"fn_name": "accept_blobs"}, files={"f": ("a.png", b"1")},
                            timeout=60)
    assert answer.status_code == 500
    assert [r.levelname for r in caplog.records if r.name.startswith("app")] == ["ERROR"]
    assert "Traceback" not in capfd.readouterr().err
    # the real thing still works: a select with its event data, then Edit without a result
    assert join(served, select, [], {"index": 1, "value": None}).status_code == 200
    assert completion(served)["success"] is True
    assert join(served, served.fn_index("edit_result"), [None, None]).status_code == 200
    message = completion(served)  # a slip: the status says so, nothing is covered
    assert message["success"] is True and "Nothing to edit" in json.dumps(message["output"])
    assert "Traceback" not in capfd.readouterr().err
    assert_still_serves(served.url)


# ----------------------------------------------------------- item 15: formats we read
@pytest.mark.parametrize("fmt", ["EPS", "ICO", "PCX"])
def test_uploads_in_other_formats_get_the_apps_message(served, tmp_path, fmt):
    """Any format PIL could open was decoded (EPS runs Ghostscript where installed)."""
    path = tmp_path / f"picture.{fmt.lower()}"
    Image.new("RGB", (32, 32), "red").save(path, format=fmt)
    with Image.open(path) as opened:  # PIL alone would read it
        assert opened.format == fmt
    client = Client(served.url, verbose=False)
    editor = {"background": handle_file(path), "layers": [], "composite": None}
    try:
        assert_refused(client.predict(editor, *INPAINT_CONTROLS, api_name="/inpaint"),
                           "Could not read the image")
    finally:
        client.close()


def test_the_bounded_editor_is_served_as_the_plain_editor(served):
    """The browser renders ``BoundedImageEditor`` with ``gr.ImageEditor``'s frontend and
    props (an ``__init__(**kwargs)`` without ``wraps`` lost them all: no editor on the page)."""
    config = httpx.get(served.url + "config", timeout=60).json()
    component = next(c for c in config["components"] if c["id"] == served.editor._id)
    assert component["type"] == "imageeditor"
    props = component["props"]
    assert props["elem_id"] == "editor" and props["image_mode"] == "RGBA"
    assert props["layers"]["disabled"] is True and props["canvas_size"] == [512, 512]


def test_the_snapshot_store_drops_the_oldest_beyond_its_bytes():
    store = BlobStore(max_ids=100, max_bytes=3000)
    for number in range(4):
        store.put(f"id-{number}", "background", b"\0" * 1000)
    store.put("id-3", "background", b"\0" * 1000)  # replacing a picture does not add up
    assert len(store) == 3 and store.total_bytes == 3000 and "id-0" not in store
    store.put("id-3", "layer", b"\0" * 500)  # 3500 bytes: the oldest goes
    assert "id-1" not in store and store.total_bytes == 2500
    assert store.pop("id-3") is not None and store.total_bytes == 1000


def test_a_browser_snapshot_of_a_thin_picture_is_refused_from_its_header(tmp_path):
    """The browser sends the canvas through ``accept_blobs`` and then only its id: the same
    header checks apply, and the refused snapshot is dropped."""
    editor = BoundedImageEditor(type="numpy", image_mode="RGBA")
    thin = png(tmp_path / "thin.png", 10000, 1)
    editor.blob_storage.put("snapshot", "background", thin.read_bytes())
    with pytest.raises(gr.Error, match="too elongated"):
        editor.preprocess(EditorData(id="snapshot"))
    assert "snapshot" not in editor.blob_storage
    fine = png(tmp_path / "fine.png", 48, 32)
    editor.blob_storage.put("snapshot", "background", fine.read_bytes())
    editor.blob_storage.put("snapshot", "layer", fine.read_bytes())
    value = editor.preprocess(EditorData(id="snapshot"))
    assert value["background"].shape == (32, 48, 4) and len(value["layers"]) == 1
