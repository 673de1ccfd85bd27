"""A seed per variant (issue #18): variant i of a run with seed s is the run of seed s + i alone.

Through the app's handlers, in every mode: the gallery PNGs of "Variants 3, seed 100" are
compared pixel for pixel with those of "Variants 1, seed 101" and "seed 102".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import handlers as h
from app.runs import RunResult, seeds_text
from app.streaming import StopSignal
from hmar_core.editing import EditSession

SEED = 100


def picture(height: int = 24, width: int = 32) -> np.ndarray:
    return (np.random.RandomState(3).rand(height, width, 3) * 255).astype(np.uint8)


def editor(background: np.ndarray, box: tuple[slice, slice]) -> dict:
    """An ImageEditor value as the browser sends it: RGBA background, one painted layer."""
    height, width = background.shape[:2]
    rgba = np.dstack([background, np.full((height, width), 255, np.uint8)])
    layer = np.zeros((height, width, 4), np.uint8)
    layer[box] = (255, 46, 136, 255)
    return {"background": rgba, "layers": [layer], "composite": rgba}


def controls(seed: int, variants: int) -> h.EditControls:
    return h.EditControls(quality=1, cfg=1.5, top_k=0, top_p=0.0, seed=str(seed),
                          variants=variants, grow=1, feather=2, only_masked=False, padding=8)


def run(events: Iterator[h.RunOutputs]) -> tuple[list[np.ndarray], list[str], list[str],
                                                  RunResult, list[str]]:
    """Drain a handler: the gallery's pixels and captions, the download names, the result
    and every status line (PNGs are read while they exist, as Gradio copies them)."""
    statuses: list[str] = []
    final = None
    for _preview, gallery, files, status, state, _ in events:
        statuses.append(status)
        if isinstance(state, RunResult):
            pixels = []
            for path, _caption in gallery:
                with Image.open(path) as image:
                    pixels.append(np.asarray(image.convert("RGBA")))
            final = (pixels, [caption for _, caption in gallery],
                     [Path(f).name for f in files], state)
    assert final is not None, statuses[-1]
    return (*final, statuses)


Mode = Callable[[object, int, int], Iterator[h.RunOutputs]]


def _generate(pipe: object, seed: int, variants: int) -> Iterator[h.RunOutputs]:
    return h.generate_events(pipe, -1, 1, 1.5, 0, 0.0, str(seed), variants, False)


def _inpaint(pipe: object, seed: int, variants: int) -> Iterator[h.RunOutputs]:
    value = editor(picture(), (slice(4, 16), slice(6, 22)))
    return h.inpaint_events(pipe, EditSession(), value, 2, 0, controls(seed, variants))


def _class_edit(pipe: object, seed: int, variants: int) -> Iterator[h.RunOutputs]:
    value = editor(picture(), (slice(0, 24), slice(0, 32)))
    return h.class_edit_events(pipe, None, value, 5, 1, controls(seed, variants))


def _outpaint(pipe: object, seed: int, variants: int) -> Iterator[h.RunOutputs]:
    value = editor(picture(16, 16), (slice(0, 0), slice(0, 0)))
    return h.outpaint_events(pipe, value, ["Right"], 50, -1, controls(seed, variants))


MODES = {"generate": _generate, "inpaint": _inpaint, "class edit": _class_edit,
         "outpaint": _outpaint}


@pytest.mark.parametrize("mode", list(MODES))
def test_each_variant_is_its_own_seed_alone(app_pipe, mode: str):
    make: Mode = MODES[mode]
    pixels, captions, names, result, statuses = run(make(app_pipe, SEED, 3))
    assert result.seeds == (100, 101, 102)
    assert [caption.split(" · ")[-1] for caption in captions] == [
        "seed 100", "seed 101", "seed 102"]
    assert len(set(names)) == 3 and "seed101-2" in names[1]  # unique, with its own seed
    assert any(status.startswith("Variant 2/3") for status in statuses)  # its own updates
    assert "seed 100 (+1 per variant: 100–102)" in statuses[-1]
    for index in (1, 2):
        alone, alone_captions, _, _, _ = run(make(app_pipe, SEED + index, 1))
        assert len(alone) == 1 and np.array_equal(alone[0], pixels[index]), (mode, index)
        assert alone_captions[0] == captions[index].replace(f"#{index + 1}", "#1")
    assert not np.array_equal(pixels[0], pixels[1])  # the variants do differ


def test_a_random_class_comes_back_with_the_variant_s_seed(app_pipe):
    _, captions, _, result, _ = run(_generate(app_pipe, 7, 4))
    for index in range(4):
        _, alone, _, again, _ = run(_generate(app_pipe, 7 + index, 1))
        assert again.classes == (result.classes[index],)
        assert alone[0].split(" · ")[1] == captions[index].split(" · ")[1]  # class in caption


def test_variant_seeds_wrap_after_the_largest_seed(app_pipe):
    largest = 2**63 - 1
    pixels, captions, _, result, statuses = run(_generate(app_pipe, largest, 2))
    assert result.seeds == (largest, 0)
    assert captions[1].endswith("seed 0")
    assert f"seed {largest} (+1 per variant: {largest}, 0)" in statuses[-1]
    alone, _, _, _, _ = run(_generate(app_pipe, 0, 1))
    assert np.array_equal(alone[0], pixels[1])


def test_stop_ends_the_run_between_variants():
    """Stop pressed while variant 1 finishes: variant 2 never starts, no result replaces the
    earlier ones."""
    from hmar_core import Pipeline

    pipe, stop, calls = Pipeline.random(seed=0), StopSignal(), []
    generate = pipe.generate

    def generate_then_stop(*args: object, **kwargs: object) -> object:
        calls.append(kwargs["seed"])
        output = generate(*args, **kwargs)
        stop.set()  # as the Stop button does while the run goes on
        return output

    pipe.generate = generate_then_stop
    outputs = list(h.generate_events(pipe, 2, 0, 1.5, 0, 0.0, "5", 3, False, stop=stop))
    statuses = [status for _, _, _, status, _, _ in outputs]
    assert calls == [5] and statuses[-1] == "Stopped."
    assert not any(isinstance(state, RunResult) for *_, state, _ in outputs)
    assert not any(status.startswith("Variant 2/3") for status in statuses)


def test_edit_this_result_loads_the_chosen_variant(app_pipe):
    pixels, _, names, result, _ = run(_inpaint(app_pipe, SEED, 3))
    value, status, _ = next(h.edit_result(result, 2))
    assert "#3" in status and "seed 102" in status
    assert Path(value["background"]).name == names[2]


def test_seeds_text():
    assert seeds_text([42]) == "seed 42"
    assert seeds_text([42, 43, 44]) == "seed 42 (+1 per variant: 42–44)"
