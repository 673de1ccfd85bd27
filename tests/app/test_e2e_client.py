"""End-to-end: the app launched in-process, driven through ``gradio_client``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

# class_id, quality, cfg, top_k, top_p, seed, variants, heatmap
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
    assert len(updates) >= 4  # start + one preview per coarse scale + result
    statuses = [update[3] for update in updates]
    assert any(s.startswith("Scale 1/") for s in statuses)
    assert final[3].startswith("Done")


def test_bad_input_is_an_error_not_a_crash(client: Client):
    with pytest.raises(AppError, match="less than minimum"):  # Gradio's own range check
        generate(client, seed=-7)
    with pytest.raises(AppError, match="not in the list of choices"):
        generate(client, seed=1, class_id=42)
    with pytest.raises(AppError, match="greater than maximum"):
        generate(client, seed=1, variants=50)
    with pytest.raises(AppError) as info:
        generate(client, seed=1, top_p=3.0)
    assert "Traceback" not in str(info.value)
    ok = generate(client, seed=3)  # the app still works afterwards
    assert ok[3].startswith("Done")


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
# grow, feather, only_masked, padding
def test_inpaint_keeps_unmasked_pixels(client: Client, tmp_path: Path):
    source = (np.random.RandomState(2).rand(40, 56, 3) * 255).astype(np.uint8)
    box = (slice(8, 24), slice(16, 40))
    value = editor_value(tmp_path, source, box)
    _, gallery, files, status, *_ = client.predict(
        value, -1, 0, 1, 1.5, 0, 0.0, 11, 2, False, 1, 0, False, 32, api_name="/inpaint")
    assert status.startswith("Done") and len(files) == 2
    mask = np.zeros(source.shape[:2], bool)
    mask[box] = True
    for path in files:
        result = pixels(path).astype(np.uint8)
        assert result.shape == source.shape
        assert np.array_equal(result[~mask], source[~mask])
        assert (result[mask] != source[mask]).any()
    # the same edit again: this user's EditSession (gr.State) resumes the cached scales
    again = client.predict(value, -1, 0, 1, 1.5, 0, 0.0, 11, 2, False, 1, 0, False, 32,
                           api_name="/inpaint")
    assert "cached" in again[3]
    assert np.array_equal(pixels(again[2][0]), pixels(files[0]))


def test_edit_modes_bad_input_is_an_error(client: Client, tmp_path: Path):
    empty = {"background": None, "layers": [], "composite": None}
    with pytest.raises(AppError, match="Upload a picture"):
        client.predict(empty, -1, 0, 1, 1.5, 0, 0.0, 1, 1, False, 1, 8, False, 32,
                       api_name="/inpaint")
    source = np.full((16, 16, 3), 128, np.uint8)
    value = editor_value(tmp_path, source, (slice(0, 0), slice(0, 0)))  # nothing painted
    with pytest.raises(AppError, match="Paint over the area"):
        client.predict(value, -1, 0, 1, 1.5, 0, 0.0, 1, 1, False, 1, 8, False, 32,
                       api_name="/inpaint")
    with pytest.raises(AppError, match="Tick at least one direction"):
        client.predict(value, [], 25, -1, 1, 1.5, 0, 0.0, 1, 1, False, 1, 8, False, 32,
                       api_name="/outpaint")
    outpainted = client.predict(value, ["Right"], 50, -1, 1, 1.5, 0, 0.0, 1, 1, False, 1, 8,
                                False, 32, api_name="/outpaint")
    assert Image.open(outpainted[2][0]).size == (24, 16)


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
    for mode, path in paths.items():
        value = {"background": handle_file(str(path)), "layers": [], "composite": None}
        out = client.predict(value, 1, 1, 1, 1.5, 0, 0.0, 3, 1, False, 1, 8, False, 32,
                             api_name="/class_edit")
        with Image.open(path) as original, Image.open(out[2][0]) as result:
            assert result.size == original.size, mode
            assert result.mode == "RGB"
