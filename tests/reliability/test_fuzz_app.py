"""Fuzzing of the app's handlers (the functions behind every Gradio event), called directly.

The editor value is what Gradio hands over: ``{"background", "layers", "composite"}`` with
RGBA/RGB/grey uint8 arrays of any size (layers possibly of another size than the background).
Properties:

* **component domain** (every control inside what its Gradio component lets through: dropdown
  choices, slider ranges, a seed >= 0), with a picture and a painted area of the background's
  size: the run streams previews and ends with a result of the right size;
* **anything else** (missing or blank pictures, strange layers, out-of-range or non-numeric
  controls as a direct API caller could send): the run ends with a result or with a
  ``gr.Error`` whose message says what to fix — never the generic "Something went wrong"
  (which the app shows for unexpected exceptions) and never another exception.
"""

from __future__ import annotations

import math

import gradio as gr
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reliability_support import count_case, fuzz_settings

from app import handlers
from app.limits import MAX_ASPECT_RATIO
from app.runs import RunResult
from hmar_core.editing import EditSession

GENERIC = "Something went wrong"
SIDES = st.one_of(st.integers(1, 40), st.sampled_from([1, 2, 160]))


def run(events) -> tuple[list, RunResult | None]:
    """Exhaust a handler's generator: (all yielded outputs, the final RunResult or None)."""
    outputs = list(events)
    result = outputs[-1][4] if outputs and isinstance(outputs[-1][4], RunResult) else None
    return outputs, result


def expect_result_or_clear_error(target: str, call) -> RunResult | None:
    """A result, or a status line that says what to fix (slips and refusals are status lines:
    ``**Not run:** ...``; an error that reaches the user as ``gr.Error`` must say it too)."""
    try:
        outputs, result = run(call())
    except gr.Error as err:
        message = str(err.message)
        assert message and GENERIC not in message, f"{target}: unexpected failure: {message}"
        count_case(target, "gr.Error")
        return None
    assert outputs, f"{target}: the handler yielded nothing"
    status = str(outputs[-1][3])
    assert GENERIC not in status and "**Failed:**" not in status, f"{target}: {status}"
    if result is None and "**Not run:**" in status:
        count_case(target, "status: not run")
        return None
    count_case(target, "ok" if result is not None else "no result (stopped/unchanged)")
    return result


# ------------------------------------------------------------------------------- editor value
@st.composite
def pictures(draw: st.DrawFn, size: tuple[int, int] | None = None) -> np.ndarray:
    height, width = size or (draw(SIDES), draw(SIDES))
    channels = draw(st.sampled_from([4, 4, 3, None]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (height, width) if channels is None else (height, width, channels)
    picture = rng.integers(0, 256, shape, dtype=np.uint8)
    if channels == 4:
        picture[..., 3] = draw(st.sampled_from([255, 255, 128, 0]))  # opaque, half, blank
    return picture


@st.composite
def layers(draw: st.DrawFn, size: tuple[int, int]) -> np.ndarray:
    """A brush layer (RGBA, paint = alpha > 0): box, speckles, full or empty."""
    height, width = size
    layer = np.zeros((height, width, 4), np.uint8)
    kind = draw(st.sampled_from(["box", "box", "speckled", "full", "empty"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "box":
        top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
        layer[top:top + 1 + height // 3, left:left + 1 + width // 3] = (255, 46, 136, 255)
    elif kind == "speckled":
        layer[rng.random((height, width)) < 0.05] = (255, 46, 136, 255)
    elif kind == "full":
        layer[:] = (255, 46, 136, 255)
    return layer


@st.composite
def editor_values(draw: st.DrawFn) -> dict | None:
    """Anything the editor may send: no picture, blank ones, layers of other sizes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([None, {}, {"background": None, "layers": [],
                                                "composite": None}]))
    background = draw(pictures())
    size = background.shape[:2]
    count = draw(st.integers(0, 3))
    painted = [draw(layers(size if draw(st.booleans()) else (draw(SIDES), draw(SIDES))))
               for _ in range(count)]
    composite = background if draw(st.booleans()) else None
    return {"background": background, "layers": painted, "composite": composite}


@st.composite
def painted_editor(draw: st.DrawFn) -> dict:
    """An opaque picture with a painted box of its own size (what a user normally sends);
    shapes the app accepts (at most 16:1, ``app.limits.MAX_ASPECT_RATIO``)."""
    height = draw(SIDES)
    width = draw(SIDES.filter(lambda w: max(w, height) <= MAX_ASPECT_RATIO * min(w, height)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    background = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    background[..., 3] = 255
    layer = np.zeros((height, width, 4), np.uint8)
    top, left = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
    layer[top:top + 1 + height // 4, left:left + 1 + width // 4, 3] = 255
    return {"background": background, "layers": [layer], "composite": background}


# --------------------------------------------------------------------------------- controls
def controls(pipe, *, hostile: bool) -> st.SearchStrategy:
    """The shared sampling/mask controls: inside the components' ranges, or anything."""
    max_steps = handlers._max_steps(pipe)
    if not hostile:
        return st.builds(
            handlers.EditControls, quality=st.integers(0, max_steps), cfg=st.floats(0, 10),
            top_k=st.integers(0, 4096), top_p=st.floats(0, 1),
            seed=st.integers(0, 2**53), variants=st.integers(1, 3),  # larger: xfail below
            grow=st.integers(0, 4), feather=st.integers(0, 32), only_masked=st.booleans(),
            padding=st.integers(0, 256), heatmap=st.booleans())
    # finite values above ~1e38 overflow the guidance (pinned in test_fuzz_engine.py)
    number = st.one_of(st.floats(-1e30, 1e30), st.integers(-(2**70), 2**70),
                       st.sampled_from([None, "", "3", "x", -1, 0.5, math.nan, math.inf,
                                        -math.inf]))
    return st.builds(handlers.EditControls, quality=number, cfg=number, top_k=number,
                     top_p=number, seed=number, variants=number, grow=number, feather=number,
                     only_masked=st.booleans(), padding=number, heatmap=st.booleans())


CLASS_CHOICES = st.one_of(st.integers(-1, 9), st.sampled_from([None, "", "2", 10, -5, 2**70,
                                                               "cat", 1.5, math.nan]))


# ---------------------------------------------------------------------------------- generate
@fuzz_settings(reduced=50, full=500)
@given(data=st.data())
def test_generate_handler(tiny_pipe, data):
    hostile = data.draw(st.booleans(), "hostile")
    c = data.draw(controls(tiny_pipe, hostile=hostile), "controls")
    choice = data.draw(CLASS_CHOICES if hostile else st.integers(-1, 9), "class")
    call = lambda: handlers.generate_events(  # noqa: E731
        tiny_pipe, choice, c.quality, c.cfg, c.top_k, c.top_p, c.seed, c.variants, c.heatmap)
    result = expect_result_or_clear_error(f"app.generate.{'hostile' if hostile else 'valid'}",
                                          call)
    if not hostile:
        assert result is not None and len(result.images) == c.variants
        assert all(image.size == (16, 16) for image in result.images)


# ------------------------------------------------------------------------------------ edits
@pytest.fixture(scope="module")
def session() -> EditSession:
    """One user's edit cache, shared by every case (a long session of varied edits)."""
    return EditSession()


def _edit_call(pipe, mode: str, editor, choice, strength, c, session: EditSession, extent,
               sides):
    if mode == "inpaint":
        return lambda: handlers.inpaint_events(pipe, session, editor, choice, strength, c)
    if mode == "class edit":
        return lambda: handlers.class_edit_events(pipe, session, editor, choice, strength, c)
    return lambda: handlers.outpaint_events(pipe, editor, sides, extent, choice, c)


MODES = ("inpaint", "class edit", "outpaint")


@fuzz_settings(reduced=50, full=600)
@given(data=st.data(), mode=st.sampled_from(MODES))
def test_edit_handlers_in_the_component_domain(tiny_pipe, session, data, mode):
    editor = data.draw(painted_editor(), "editor")
    c = data.draw(controls(tiny_pipe, hostile=False), "controls")
    choice = data.draw(st.integers(0 if mode == "class edit" else -1, 9), "class")
    strength = data.draw(st.integers(0, len(tiny_pipe.patch_nums) - 1), "strength")
    extent = data.draw(st.integers(1, 20).map(lambda x: 5 * x), "extent")
    sides = data.draw(st.lists(st.sampled_from(["Left", "Right", "Top", "Bottom"]),
                               min_size=1, max_size=4, unique=True), "sides")
    call = _edit_call(tiny_pipe, mode, editor, choice, strength, c, session, extent, sides)
    outputs, result = run(call())
    height, width = editor["background"].shape[:2]
    assert result is not None and len(result.images) == c.variants
    if mode != "outpaint":
        assert all(image.size == (width, height) for image in result.images)
    else:
        assert all(image.width >= width and image.height >= height for image in result.images)
        assert any(image.size != (width, height) for image in result.images)
    # previews were streamed ("Scale 2/4 · window 1/3", "Variant 1/2 · Scale 2/4", ...)
    assert any("Scale " in out[3] for out in outputs)
    count_case(f"app.{mode.replace(' ', '_')}.valid", "ok")


@fuzz_settings(reduced=90, full=1000)
@given(data=st.data(), mode=st.sampled_from(MODES))
def test_edit_handlers_with_anything(tiny_pipe, session, data, mode):
    editor = data.draw(editor_values(), "editor")
    c = data.draw(controls(tiny_pipe, hostile=data.draw(st.booleans(), "hostile")), "controls")
    choice = data.draw(CLASS_CHOICES, "class")
    strength = data.draw(st.one_of(st.integers(-2, 5), st.sampled_from([math.nan, "1", None])),
                         "strength")
    extent = data.draw(st.one_of(st.integers(-5, 250), st.sampled_from([math.inf, math.nan])),
                       "extent")
    sides = data.draw(st.one_of(st.none(), st.lists(st.sampled_from(
        ["Left", "Right", "Top", "Bottom", "left ", "Up", ""]), max_size=4)), "sides")
    call = _edit_call(tiny_pipe, mode, editor, choice, strength, c, session, extent, sides)
    expect_result_or_clear_error(f"app.{mode.replace(' ', '_')}.anything", call)


def test_oversized_pictures_get_a_clear_message(tiny_pipe, session):
    """Above the app's 40 MP limit: refused with a message (zero-stride arrays: no memory)."""
    huge = np.broadcast_to(np.full((4,), 255, np.uint8), (7000, 6000, 4))
    layer = np.broadcast_to(np.full((4,), 255, np.uint8), (7000, 6000, 4))
    editor = {"background": huge, "layers": [layer], "composite": None}
    c = handlers.EditControls(1, 1.5, 0, 0.0, 1, 1)
    outputs, result = run(handlers.inpaint_events(tiny_pipe, session, editor, -1, 0, c))
    assert result is None and "too large" in str(outputs[-1][3])


@pytest.mark.parametrize("seed", [2**53 + 1, 2**63 - 1, str(2**63 - 1), f" {2**53 + 1} "])
def test_large_seeds_are_kept_exactly(seed):
    """The seed box accepts 0 .. 2**63 - 1 (the engine's range), exactly: parsing once went
    through float, so 2**53 + 1 silently became 2**53 (another picture than the seed shown)
    and 2**63 - 1 was refused as 2**63."""
    from app.params import parse_seed

    assert parse_seed(seed) == int(seed)
