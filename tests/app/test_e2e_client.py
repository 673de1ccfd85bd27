"""End-to-end: the app launched in-process, driven through ``gradio_client``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

# class_id, quality, cfg, top_k, top_p, seed, variants, heatmap
PAINTED = "Painted area"
GENERATE = {"quality": 1, "cfg": 1.5, "top_k": 0, "top_p": 0.0, "variants": 1,
            "heatmap": False}


@pytest.fixture()
def client(served_app: str):
    client = Client(served_app, verbose=False)
    try:
        yield client
    finally:
        client.close()


def generate(client: Client, seed: int, class_id: int = 3, **overrides: object) -> tuple:
    kwargs = {**GENERATE, **overrides}
    return client.predict(class_id, kwargs["quality"], kwargs["cfg"], kwargs["top_k"],
                          kwargs["top_p"], seed, kwargs["variants"], kwargs["heatmap"],
                          api_name="/generate")


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(np.int16)


def test_two_seeds_give_two_different_images(client: Client):
    first = generate(client, seed=1)
    second = generate(client, seed=2)
    again = generate(client, seed=1)
    image_1, image_2 = (pixels(out[1][0]["image"]) for out in (first, second))
    assert image_1.shape == (16, 16, 3)
    assert np.abs(image_1 - image_2).max() > 0
    assert np.array_equal(image_1, pixels(again[1][0]["image"]))  # reproducible
    assert "seed 1" in first[3] and "seed 2" in second[3]


def test_results_are_png_downloads_and_variants(client: Client):
    preview, gallery, files, status, *_ = generate(client, seed=5, variants=3)
    assert len(gallery) == 3 and len(files) == 3
    assert all(Path(f).suffix == ".png" for f in files)
    assert np.array_equal(pixels(files[0]), pixels(gallery[0]["image"]))
    assert Path(preview).suffix == ".png"


def test_generate_streams_a_preview_per_scale(client: Client):
    job = client.submit(4, 1, 1.5, 0, 0.0, 9, 2, False, api_name="/generate")
    final = job.result(timeout=60)
    updates = job.outputs()
    assert len(updates) >= 4  # start + the first scale's preview + each variant done + result
    statuses = [update[3] for update in updates]
    # the variants run one after the other: the first scale's preview, then each variant's
    # picture as it is done (status-only updates of a fast run are throttled)
    assert any(s.startswith("Variant 1/2 · Scale 1/") for s in statuses)
    assert any(s == "Variant 1/2 done" for s in statuses)
    assert any(s == "Variant 2/2 done" for s in statuses)
    assert final[3].startswith("Done")
    assert [item["caption"].split(" · ")[-1] for item in final[1]] == ["seed 9", "seed 10"]


def test_slips_are_a_status_line_and_out_of_range_values_are_clamped(client: Client):
    """One rule for every control: clamped to its range, and the status says so; a slip is a
    status line (no error that covers the outputs), never a traceback."""
    clamped = generate(client, seed=1, variants=100, cfg=50, top_k=99999, top_p=5, quality=99)
    status = clamped[3]
    assert status.startswith("Done") and len(clamped[2]) == 8
    for note in ("Variants 100 → 8", "CFG 50 → 10", "Top-k 99999 → 4096", "Top-p 5 → 1",
                 "Quality 99 → "):
        assert note in status
    negative = generate(client, seed=-7)
    assert negative[3].startswith("Done") and "Seed -7 → 0" in negative[3]
    slip = generate(client, seed="1.5")
    assert slip[3].startswith("**Not run:**") and "whole number" in slip[3]
    assert "Traceback" not in slip[3]
    with pytest.raises(AppError, match="not in the list of choices"):  # Gradio's own check
        generate(client, seed=1, class_id=42)
    ok = generate(client, seed=3)  # the app still works afterwards
    assert ok[3].startswith("Done")


def test_the_largest_seed_arrives_exactly(client: Client):
    out = generate(client, seed="9223372036854775807")
    assert out[3].startswith("Done") and "seed 9223372036854775807" in out[3]
    assert all("seed 9223372036854775807" in item["caption"] for item in out[1])


def test_random_seed_endpoint(client: Client):
    seeds = {int(client.predict(api_name="/random_seed")) for _ in range(3)}
    assert len(seeds) > 1 and all(s >= 0 for s in seeds)


def write_png(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def editor_value(tmp_path: Path, background: np.ndarray, box: tuple[slice, slice]) -> dict:
    from gradio_client import handle_file

    height, width = background.shape[:2]
    layer = np.zeros((height, width, 4), np.uint8)
    layer[box] = (255, 46, 136, 255)
    return {"background": handle_file(write_png(tmp_path / "background.png", background)),
            "layers": [handle_file(write_png(tmp_path / "layer.png", layer))],
            "composite": None}


# image, class_id, strength, quality, cfg, top_k, top_p, seed, variants, heatmap,
# area, grow, feather, only_masked, padding
def test_inpaint_keeps_unmasked_pixels(client: Client, tmp_path: Path):
    source = (np.random.RandomState(2).rand(40, 56, 3) * 255).astype(np.uint8)
    box = (slice(8, 24), slice(16, 40))
    value = editor_value(tmp_path, source, box)
    _, gallery, files, status, *_ = client.predict(
        value, -1, 0, 1, 1.5, 0, 0.0, 11, 2, False, PAINTED, 1, 0, False, 32,
        api_name="/inpaint")
    assert status.startswith("Done") and len(files) == 2
    mask = np.zeros(source.shape[:2], bool)
    mask[box] = True
    for path in files:
        result = pixels(path).astype(np.uint8)
        assert result.shape == source.shape
        assert np.array_equal(result[~mask], source[~mask])
        assert (result[mask] != source[mask]).any()
    # the same edit again: this user's EditSession (gr.State) resumes the cached scales
    again = client.predict(value, -1, 0, 1, 1.5, 0, 0.0, 11, 2, False, PAINTED, 1, 0, False,
                           32, api_name="/inpaint")
    assert "cached" in again[3]
    assert np.array_equal(pixels(again[2][0]), pixels(files[0]))


def test_edit_slips_are_status_lines(client: Client, tmp_path: Path):
    empty = {"background": None, "layers": [], "composite": None}
    out = client.predict(empty, -1, 0, 1, 1.5, 0, 0.0, 1, 1, False, PAINTED, 1, 8, False, 32,
                         api_name="/inpaint")
    assert out[3].startswith("**Not run:**") and "Upload a picture" in out[3]
    source = np.full((16, 16, 3), 128, np.uint8)
    value = editor_value(tmp_path, source, (slice(0, 0), slice(0, 0)))  # nothing painted
    out = client.predict(value, -1, 0, 1, 1.5, 0, 0.0, 1, 1, False, PAINTED, 1, 8, False, 32,
                         api_name="/inpaint")
    assert "Paint over the area" in out[3]
    out = client.predict(value, [], 25, -1, 1, 1.5, 0, 0.0, 1, 1, False, PAINTED, 1, 8, False,
                         32, api_name="/outpaint")
    assert "Tick at least one direction" in out[3]
    outpainted = client.predict(value, ["Right"], 50, -1, 1, 1.5, 0, 0.0, 1, 1, False,
                                PAINTED, 1, 8, False, 32, api_name="/outpaint")
    assert Image.open(outpainted[2][0]).size == (24, 16)
    whole = client.predict(value, -1, 0, 1, 1.5, 0, 0.0, 1, 1, False, "Whole picture", 1, 8,
                           False, 32, api_name="/inpaint")  # "mask everything": no paint needed
    assert whole[3].startswith("Done")


def test_a_picture_over_the_pixel_limit_gets_the_app_message(client: Client, tmp_path: Path,
                                                             launch, caplog):
    """The decoding limit of launch.py (PIL refuses above 40 MP): the app's message, not
    Gradio's "Could not preprocess input component ... DecompressionBombError"; one log line."""
    from gradio_client import handle_file

    from app.components import MAX_PIXELS

    launch.limit_image_decoding(MAX_PIXELS)
    path = tmp_path / "huge.png"
    Image.new("RGB", (6500, 6500), (30, 120, 200)).save(path)  # 42 MP, ~130 KB
    value = {"background": handle_file(str(path)), "layers": [], "composite": None}
    with caplog.at_level("INFO"):
        out = client.predict(value, 1, 1, 1, 1.5, 0, 0.0, 3, 1, False, PAINTED, 1, 8, False,
                             32, api_name="/class_edit")
    assert "The picture is too large" in out[3] and "40 megapixels" in out[3]
    assert "DecompressionBomb" not in out[3] and "preprocess" not in out[3]
    assert not any(record.exc_info for record in caplog.records)


def test_uploads_of_any_mode_and_shape(client: Client, tmp_path: Path):
    from gradio_client import handle_file

    gray = (np.arange(90 * 300) % 251).reshape(90, 300).astype(np.uint8)
    paths = {"L": tmp_path / "gray.png", "P": tmp_path / "palette.png",
             "RGBA": tmp_path / "transparent.png"}
    Image.fromarray(gray).save(paths["L"])
    Image.fromarray(gray).convert("P").save(paths["P"])
    rgba = np.zeros((50, 20, 4), np.uint8)
    rgba[10:40, 5:15] = (200, 30, 30, 255)  # a red bar on a transparent background
    Image.fromarray(rgba).save(paths["RGBA"])
    kept = {"L": "L", "P": "L", "RGBA": "RGBA"}  # the palette is grey: a greyscale picture
    for mode, path in paths.items():
        value = {"background": handle_file(str(path)), "layers": [], "composite": None}
        out = client.predict(value, 1, 1, 1, 1.5, 0, 0.0, 3, 1, False, PAINTED, 1, 8,
                             False, 32, api_name="/class_edit")
        with Image.open(path) as original, Image.open(out[2][0]) as result:
            assert result.size == original.size, mode
            assert result.mode == kept[mode]  # the upload's mode comes back (issue #18)
