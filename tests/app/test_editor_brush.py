"""The "Brush size" control and what a property update of the editor does on the server."""

from __future__ import annotations

import io

import gradio as gr
from gradio.components.image_editor import EditorData
from PIL import Image

from app import handlers as h
from app.components import PictureEditor, RefusedPicture
from app.params import BRUSH_SIZE_RANGE


def test_brush_size_update_sets_the_brush_radius():
    update = h.brush_size_update(32)
    assert update["__type__"] == "update" and set(update) == {"__type__", "brush"}
    assert update["brush"].default_size == 16  # Gradio's size is the radius
    assert update["brush"].colors == [h.BRUSH_COLOR] and update["brush"].color_mode == "fixed"
    assert h.brush_size_update(10_000)["brush"].default_size == BRUSH_SIZE_RANGE[1] // 2
    assert h.brush_size_update(0)["brush"].default_size == 1
    assert isinstance(h.brush_size_update("wide"), type(gr.skip()))  # left as it was


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (width, height), (10, 20, 30, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_session_copy_after_a_brush_update_is_the_same_editor():
    """Gradio answers a property update (the brush size) by building a per-session copy from
    the constructor's arguments (``gradio/blocks.py``, ``postprocess_data``); the copy must
    refuse pictures as the app does and share the bounded snapshot store."""
    with gr.Blocks():
        editor = PictureEditor(type="numpy", image_mode="RGBA", brush=h.brush(48),
                               elem_id="editor")
    kwargs = {**editor.constructor_args, "brush": h.brush(8), "render": False}
    kwargs.pop("value", None)
    copy = editor.__class__(**kwargs)
    assert isinstance(copy, PictureEditor) and copy.brush.default_size == 4
    assert copy.blob_storage is editor.blob_storage  # one bound for every session
    assert copy.get_block_name() == "imageeditor"  # served with Gradio's editor frontend
    copy.blob_storage.put("thin", "background", png_bytes(10_000, 1))
    refused = copy.preprocess(EditorData(id="thin"))
    assert isinstance(refused, RefusedPicture) and "elongated" in refused.reason
