"""A real browser drives the app: upload, paint a brush stroke, inpaint, check, screenshot.

Playwright (the Python package) drives Debian's chromium through ``executable_path``; no browser
is downloaded. Without ``/usr/bin/chromium`` (or ``$HMAR_CHROMIUM``) the test is skipped; CI
installs it with ``.ci/install-browser.sh``.

Environment knobs:
    HMAR_CHROMIUM: another chromium binary.
    HMAR_APP_CHECKPOINT: serve this model folder instead of the tiny random model.
    HMAR_UPDATE_SCREENSHOT=1: also copy the screenshot to docs/screenshot.png (for the README).
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("HMAR_CHROMIUM", "/usr/bin/chromium")
#: The flags known to work on the project's machines (closed network, root, no GPU).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshot.png"
TIMEOUT_MS = 60_000


def source_picture(size: int = 256) -> np.ndarray:
    """A picture with structure: a diagonal gradient, a disc and a bar."""
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([0.9 - 0.5 * y, 0.3 + 0.5 * x, 0.5 + 0.4 * (x - y)], axis=-1)
    disc = (x - 0.35) ** 2 + (y - 0.4) ** 2 < 0.04
    rgb[disc] = (0.95, 0.75, 0.1)
    rgb[int(0.75 * size):int(0.85 * size), int(0.1 * size):int(0.9 * size)] = (0.2, 0.2, 0.6)
    return (rgb.clip(0, 1) * 255).astype(np.uint8)


@pytest.fixture()
def browser_pipe(app_pipe):
    folder = os.environ.get("HMAR_APP_CHECKPOINT")
    if not folder:
        return app_pipe
    from hmar_core import Pipeline

    return Pipeline.from_pretrained(folder)


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[object]:
    """A headless chromium context with a fresh profile (skips without chromium)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM}: run `bash .ci/install-browser.sh` "
                    "(Debian's chromium) or set HMAR_CHROMIUM")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1200})
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture()
def page(browser, browser_pipe, launch_app) -> object:
    """A page on the app (tiny random model unless HMAR_APP_CHECKPOINT is set)."""
    import app

    warning = (None if os.environ.get("HMAR_APP_CHECKPOINT")
               else "tiny random test model: its pictures are noise.")
    url = launch_app(browser_pipe, warning=warning, timing=app.calibrate(browser_pipe))
    browser_page = browser.new_page()
    browser_page.goto(url)
    return browser_page


def fetch_image(page: object, src: str) -> np.ndarray:
    """Download an image the page shows (same origin) as an RGB array."""
    response = page.request.get(src)
    assert response.ok, f"GET {src} -> {response.status}"
    with Image.open(io.BytesIO(response.body())) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def test_inpaint_in_a_real_browser(page, tmp_path: Path, artifacts_dir: Path):
    from playwright.sync_api import expect

    source = source_picture()
    upload = tmp_path / "source.png"
    Image.fromarray(source).save(upload)
    editor = page.locator("#editor")

    # 1. upload through the editor's file chooser, then wait until the editor has resized its
    #    canvas to the picture: its zoom read-out leaves the value of the empty 512×512 canvas
    zoom = editor.get_by_text(re.compile(r"^\d+%$"))
    empty_zoom = zoom.inner_text()
    with page.expect_file_chooser() as chooser:
        editor.get_by_label("Click to upload or drop files").click()
    chooser.value.set_files(str(upload))
    canvas = editor.locator("canvas").first
    expect(canvas).to_be_visible()
    expect(zoom).not_to_have_text(empty_zoom, timeout=TIMEOUT_MS)
    page.wait_for_timeout(300)

    # 2. Inpaint mode, then one brush stroke through the middle of the picture
    page.get_by_role("tab", name="Inpaint").click()
    editor.get_by_label("Brush", exact=True).click()
    box = canvas.bounding_box()
    centre_x, centre_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(centre_x - 50, centre_y - 10)
    page.mouse.down()
    for step in range(1, 6):
        page.mouse.move(centre_x - 50 + 20 * step, centre_y - 10 + 4 * step)
    page.mouse.up()
    page.wait_for_timeout(500)

    # 3. run and wait for the result
    page.locator("#inpaint-button").click()
    status = page.locator("#status")
    expect(status).to_contain_text("Done", timeout=TIMEOUT_MS)
    result_image = page.locator("#results img").first
    expect(result_image).to_be_visible()
    expect(page.locator("#downloads")).to_contain_text(".png")
    page.wait_for_timeout(300)

    # 4. screenshot (artifact; optionally the README's)
    shot = artifacts_dir / "browser-inpaint.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("HMAR_UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    # 5. the result differs inside the stroke and is unchanged far from it
    result = fetch_image(page, result_image.get_attribute("src"))
    assert result.shape == source.shape  # the engine returns the upload's size
    original = source.astype(np.int16)
    middle = (slice(120, 136), slice(120, 136))  # the stroke crosses the picture's centre
    assert np.abs(result[middle] - original[middle]).mean() > 2
    corner = (slice(0, 40), slice(0, 40))  # far from the stroke (and its feather)
    assert np.array_equal(result[corner], original[corner])

    # 6. the heatmap toggle redraws the gallery from the stored result (no model run)
    plain_src = result_image.get_attribute("src")
    page.locator("#heatmap input").check()
    expect(result_image).not_to_have_attribute("src", plain_src, timeout=TIMEOUT_MS)
    overlay = fetch_image(page, result_image.get_attribute("src"))
    assert overlay.shape == result.shape and not np.array_equal(overlay, result)
    page.screenshot(path=str(artifacts_dir / "browser-heatmap.png"), full_page=True)


def test_stop_button_ends_the_run(browser, launch_app):
    """Stop during a (deliberately slow) run: the model stops at the next scale."""
    import time

    from playwright.sync_api import expect

    import app
    from hmar_core import Pipeline

    pipeline = Pipeline.random(seed=0)
    decode, decode_calls = pipeline.tokenizer.decode_fhat, []

    def slow_decode(f_hat):  # every scale's preview takes 0.8 s
        decode_calls.append(time.monotonic())
        time.sleep(0.8)
        return decode(f_hat)

    pipeline.tokenizer.decode_fhat = slow_decode
    page = browser.new_page()
    page.goto(launch_app(pipeline, timing=app.Timing(3.2, 0.0)))
    status = page.locator("#status")
    page.locator("#generate-button").click()
    expect(status).to_contain_text("Scale 1/", timeout=TIMEOUT_MS)
    stopped_at = time.monotonic()
    page.locator("#stop-button").click()
    expect(status).to_have_text("Stopped.")
    page.wait_for_timeout(2500)  # longer than the rest of the run would take
    assert page.locator("#results img").count() == 0
    late = [t for t in decode_calls if t > stopped_at + 1.5]
    assert not late, "the model kept working after Stop"
    assert len(decode_calls) < len(pipeline.patch_nums)  # a full run decodes once per scale
