"""A real browser drives the app: upload, paint a brush stroke, inpaint, check, screenshot.

Playwright (the Python package) drives Debian's chromium through ``executable_path``; no browser
is downloaded. Without ``/usr/bin/chromium`` (or ``$HMAR_CHROMIUM``) the test is skipped; CI
installs it with ``.ci/install-browser.sh``.

Environment knobs:
    HMAR_CHROMIUM: another chromium binary.
    HMAR_APP_CHECKPOINT: serve this model folder instead of the tiny random model.
    HMAR_UPDATE_SCREENSHOT=1: also copy the screenshots to docs/ (docs/screenshot.png for the
        README, docs/app-<mode>.png for the tour in docs/APP.md).
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
DOCS = Path(__file__).resolve().parents[2] / "docs"
DOCS_SCREENSHOT = DOCS / "screenshot.png"
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
    page.get_by_role("tab", name="Edit", exact=True).click()
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
    canvas = editor.locator("canvas").first
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
    assert page.locator(".generating").count() == 0  # the "running" borders are gone
    assert page.locator("#results img").count() == 0
    late = [t for t in decode_calls if t > stopped_at + 1.5]
    assert not late, "the model kept working after Stop"
    assert len(decode_calls) < len(pipeline.patch_nums)  # a full run decodes once per scale


def upload(page: object, path: Path) -> None:
    """Choose ``path`` in the editor's file input (as its upload button or a drop does)."""
    page.locator("#editor input[type=file]").first.set_input_files(str(path))


def shoot(page: object, artifacts_dir: Path, name: str) -> None:
    """A full-page screenshot in the artifacts (and in docs/ with HMAR_UPDATE_SCREENSHOT=1)."""
    shot = artifacts_dir / f"app-{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("HMAR_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOCS / f"app-{name}.png")


def set_number(page: object, label: str, value: str) -> None:
    """Type into a slider's number box and leave it (as a person does)."""
    box = page.get_by_label(f"number input for {label}")
    box.fill(value)
    box.press("Tab")


def test_the_editor_as_a_person_uses_it(page, browser_pipe, tmp_path: Path,
                                       artifacts_dir: Path):
    """Issue #18 in one browser session: Stop when idle, "Edit this result" after the
    variants changed, slips that leave the results usable, the largest seed, uploads over the
    size and pixel limits; a screenshot of every mode."""
    from playwright.sync_api import expect

    status, results = page.locator("#status"), page.locator("#results")

    # the class list filters by typing (the text replaces "Random class", not appended)
    name = browser_pipe.class_names[3]
    class_box = page.locator("#generate-class input")
    class_box.click()
    page.keyboard.type(f"{name} (3)")
    page.keyboard.press("Enter")
    expect(class_box).to_have_value(f"{name} (3)")

    # Stop with nothing running: a no-op with a message, not "Stopped."
    page.locator("#stop-button").click()
    expect(status).to_contain_text("Nothing is running")

    # "Edit this result" loads the highlighted picture, not a stale remembered one
    # (each run adds its results to the history: its length says that a run has finished)
    history = page.locator("#history .thumbnail-item")
    set_number(page, "Variants", "4")
    page.locator("#generate-button").click()
    expect(history).to_have_count(4, timeout=TIMEOUT_MS)
    expect(results.locator(".thumbnail-item")).to_have_count(4)
    results.locator(".thumbnail-item").nth(3).click()
    set_number(page, "Variants", "2")
    page.locator("#generate-button").click()
    expect(history).to_have_count(6, timeout=TIMEOUT_MS)
    expect(results.locator(".thumbnail-item")).to_have_count(2)
    page.wait_for_timeout(500)
    shoot(page, artifacts_dir, "generate")
    highlighted = results.locator(".thumbnail-item.selected")
    expected = 1
    if highlighted.count():
        expected = 1 + results.locator(".thumbnail-item").evaluate_all(
            "(items) => items.findIndex((item) => item.classList.contains('selected'))")
    page.locator("#to-editor").click()
    expect(status).to_contain_text(f"Editing result #{expected} ")
    expect(page.get_by_role("tab", name="Edit", exact=True)).to_have_attribute(
        "aria-selected", "true")

    # a slip (nothing painted) is a status line; the results stay visible and usable
    page.locator("#inpaint-button").click()
    expect(status).to_contain_text("Not run: Paint over the area")
    expect(results.locator("img").first).to_be_visible()
    assert page.get_by_text("Error", exact=True).count() == 0  # no error overlay
    expect(page.locator("#downloads")).to_contain_text(".png")

    # the largest seed is typed and used exactly; "Whole picture" needs no painting
    page.locator("#seed textarea, #seed input").first.fill("9223372036854775807")
    page.get_by_role("button", name="Mask options").click()
    page.get_by_label("Whole picture").check()
    page.locator("#inpaint-button").click()
    # the history keeps earlier results (4 + 2 generated, 2 inpainted), not replaced
    expect(history).to_have_count(8, timeout=TIMEOUT_MS)
    expect(status).to_contain_text("Done")
    expect(status).to_contain_text("seed 9223372036854775807")
    expect(page.locator("#compare img")).to_have_count(2)  # the before / after view
    shoot(page, artifacts_dir, "inpaint")

    # outpaint and class edit run from the same editor
    page.get_by_role("tab", name="Outpaint").click()
    page.locator("#outpaint-button").click()
    expect(history).to_have_count(10, timeout=TIMEOUT_MS)
    shoot(page, artifacts_dir, "outpaint")
    page.get_by_role("tab", name="Class edit").click()
    page.locator("#class-edit-button").click()
    expect(history).to_have_count(12, timeout=TIMEOUT_MS)
    shoot(page, artifacts_dir, "class-edit")

    # uploads over the limits get the app's message at once, before any upload
    alert = page.locator("#upload-alert")
    big = tmp_path / "big.png"  # 21.9 MB stored (uncompressed) PNG: over "20mb"
    Image.new("RGB", (2700, 2700), (200, 40, 40)).save(big, compress_level=0)
    upload(page, big)
    expect(alert).to_contain_text("too large to upload", timeout=10_000)
    huge = tmp_path / "huge.png"  # 42 MP but tiny on disk
    Image.new("RGB", (6500, 6500), (40, 40, 200)).save(huge)
    upload(page, huge)
    expect(alert).to_contain_text("6500×6500", timeout=10_000)
    expect(alert).to_contain_text("40 megapixels")
    shoot(page, artifacts_dir, "upload-refused")


# ------------------------------------------------------------------------ the mask editor
@pytest.fixture()
def recorded(browser, app_pipe, launch_app, monkeypatch) -> tuple[object, list]:
    """A page on the app that records the mask every edit's handler reads from the editor
    (the real editor and handlers; only an observer is added around ``editor_value``)."""
    import app
    from app import handlers

    masks: list[np.ndarray | None] = []
    usual = handlers.editor_value

    def observe(value: object) -> tuple[object, np.ndarray | None]:
        picture, mask = usual(value)
        masks.append(mask)
        return picture, mask

    monkeypatch.setattr(handlers, "editor_value", observe)
    browser_page = browser.new_page()
    browser_page.goto(launch_app(app_pipe, timing=app.calibrate(app_pipe)))
    return browser_page, masks


def open_picture(page: object, tmp_path: Path) -> object:
    """Upload the test picture in the Edit tab; wait until the editor shows it; the editor."""
    from playwright.sync_api import expect

    Image.fromarray(source_picture()).save(tmp_path / "source.png")
    page.get_by_role("tab", name="Edit", exact=True).click()
    editor = page.locator("#editor")
    zoom = editor.get_by_text(re.compile(r"^\d+%$"))
    empty_zoom = zoom.inner_text()
    upload(page, tmp_path / "source.png")
    expect(zoom).not_to_have_text(empty_zoom, timeout=TIMEOUT_MS)
    page.wait_for_timeout(500)
    editor.get_by_label("Brush", exact=True).click()
    return editor


def paint(page: object, editor: object, dy: float = 0.0) -> None:
    """One horizontal stroke, 80 screen px long, across the middle of the canvas."""
    box = editor.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2 - 40, box["y"] + box["height"] / 2 + dy
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 9):
        page.mouse.move(x + 10 * step, y)
    page.mouse.up()
    page.wait_for_timeout(500)


def inpaint(page: object, masks: list) -> np.ndarray | None:
    """Press Inpaint; the mask the run received (``None``: nothing painted)."""
    from playwright.sync_api import expect

    count = len(masks)
    page.locator("#inpaint-button").click()
    for _ in range(TIMEOUT_MS // 100):  # until the server has read the editor's value
        if len(masks) > count:
            break
        page.wait_for_timeout(100)
    assert len(masks) == count + 1, "the run did not receive the editor's value"
    expect(page.locator("#status")).to_contain_text(re.compile("Done|Not run"))
    expect(page.locator(".generating")).to_have_count(0)
    return masks[-1]


def test_ctrl_z_and_redo_in_the_mask_editor(recorded, tmp_path: Path):
    """Ctrl+Z presses the editor's Undo, Ctrl+Shift+Z and Ctrl+Y its Redo; in a text field
    the keys are left alone. Checked through the mask that Inpaint receives."""
    page, masks = recorded
    editor = open_picture(page, tmp_path)
    paint(page, editor)
    page.locator("#seed textarea, #seed input").first.click()
    page.keyboard.press("Control+z")  # in the seed box: its own undo, not the editor's
    painted = inpaint(page, masks)
    assert painted is not None and painted.sum() > 0
    # the focus is on the Inpaint button now (not a text field): the shortcuts act
    page.keyboard.press("Control+z")
    assert inpaint(page, masks) is None
    expect_status(page, "Not run: Paint over the area")
    page.keyboard.press("Control+Shift+z")
    assert np.array_equal(inpaint(page, masks), painted)
    page.keyboard.press("Control+z")
    assert inpaint(page, masks) is None
    page.keyboard.press("Control+y")
    assert np.array_equal(inpaint(page, masks), painted)


def expect_status(page: object, text: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#status")).to_contain_text(text)


def test_brush_size_sets_the_width_of_the_next_stroke(recorded, tmp_path: Path):
    """The "Brush size" slider sets the editor's brush (its own size control shows the value)
    and the width of the next stroke, read from the mask the Inpaint handler receives."""
    from playwright.sync_api import expect

    page, masks = recorded
    editor = open_picture(page, tmp_path)
    rows, areas = {}, {}
    for size in (8, 64):
        set_number(page, "Brush size (px of the picture)", str(size))
        editor.get_by_label("Brush Size", exact=True).click()  # the editor's own control:
        expect(editor.locator("input[type=range]")).to_have_value(str(size // 2))  # radius
        editor.get_by_label("Brush", exact=True).click()
        paint(page, editor)
        mask = inpaint(page, masks)
        assert mask is not None
        rows[size], areas[size] = int(mask.any(axis=1).sum()), int(mask.sum())
        page.keyboard.press("Control+z")  # the next stroke alone
    # a horizontal stroke is as many rows high as the brush is wide, in pixels of the picture
    assert abs(rows[8] - 8) <= 2 and abs(rows[64] - 64) <= 6, rows
    assert areas[64] > 4 * areas[8]
