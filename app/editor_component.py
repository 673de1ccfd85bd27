"""``BoundedImageEditor``: Gradio's ImageEditor with its server side bounded.

Gradio 6's ``gr.ImageEditor`` has a server function, ``accept_blobs``, that the browser calls
(``POST /gradio_api/component_server``) after every stroke: it stores the canvas images under a
client-chosen id until the next run reads them. As shipped it is open to any client without
bounds: ``index=20000000`` allocated a list of that length, every call kept up to 20 MB forever
under a new id, and one call could carry 1,000 files. Its ``preprocess`` decoded every listed
layer (one 35 KB PNG of 3000×3000 listed N times: N × 36 MB) in any format PIL knows.

Here (issue 17, items 2, 3 and 15):

* ``accept_blobs`` takes one file per call, a kind of ``background``, ``composite`` or
  ``layer`` with index 0 (the UI has one brush layer), an id of at most 64 characters, and
  keeps the blobs in a :class:`BlobStore` bounded in ids and bytes (oldest dropped first);
  anything else is answered 400 (413 for a file above the upload cap);
* ``preprocess`` refuses more than :data:`MAX_LAYERS` layers, and reads every picture's header
  first (formats ``READ_FORMATS`` only, pixels and shape per :mod:`app.limits`, all pictures
  together at most :data:`MAX_EDITOR_PIXELS`) before anything is decoded.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import HTTPException
from gradio.components.base import server
from gradio.components.image_editor import EditorData, EditorDataBlobs, EditorValue

from .errors import InputError
from .limits import MAX_PIXELS, MAX_UPLOAD_BYTES, check_picture_size, header_size

__all__ = ["BLOB_STORE_BYTES", "BLOB_STORE_IDS", "MAX_EDITOR_PIXELS", "MAX_LAYERS", "BlobStore",
           "BoundedImageEditor"]

logger = logging.getLogger(__name__)

#: Brush layers a run may carry (the UI is built with ``layers=False``: one layer).
MAX_LAYERS = 1
#: All pictures of one editor value together (background + composite + layer).
MAX_EDITOR_PIXELS = 3 * MAX_PIXELS
#: Canvas snapshots kept for runs that have not started yet: at most this many ids ...
BLOB_STORE_IDS = 256
#: ... and this many bytes in all; the oldest snapshot is dropped first.
BLOB_STORE_BYTES = 256 * 2**20
#: Longest accepted snapshot id (the browser sends ~11 random characters).
MAX_ID_LENGTH = 64
_KINDS = ("background", "composite", "layer")


def _size(blobs: EditorDataBlobs) -> int:
    parts = [blobs.background, blobs.composite, *blobs.layers]
    return sum(len(part) for part in parts if part is not None)


class BlobStore:
    """Canvas snapshots by id, bounded in count and bytes (oldest first out); thread-safe.

    Offers the ``get`` / ``pop`` / ``in`` that ``gr.ImageEditor.preprocess`` uses on its
    ``blob_storage``.
    """

    def __init__(self, max_ids: int = BLOB_STORE_IDS, max_bytes: int = BLOB_STORE_BYTES) -> None:
        self.max_ids = max_ids
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, EditorDataBlobs] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def total_bytes(self) -> int:
        """Bytes of all stored snapshots."""
        with self._lock:
            return self._bytes

    def get(self, key: str, default: EditorDataBlobs | None = None) -> EditorDataBlobs | None:
        """The snapshot stored under ``key`` (``default`` if none)."""
        with self._lock:
            return self._items.get(key, default)

    def pop(self, key: str, default: EditorDataBlobs | None = None) -> EditorDataBlobs | None:
        """Remove and return the snapshot under ``key``."""
        with self._lock:
            blobs = self._items.pop(key, None)
            if blobs is None:
                return default
            self._bytes -= _size(blobs)
            return blobs

    def put(self, key: str, kind: str, data: bytes) -> None:
        """Store one image of a snapshot (``kind``: background, composite or layer 0)."""
        with self._lock:
            blobs = self._items.pop(key, None)
            if blobs is None:
                blobs = EditorDataBlobs(background=None, layers=[], composite=None)
            self._bytes -= _size(blobs)
            if kind == "layer":
                blobs.layers = [data]
            else:
                setattr(blobs, kind, data)
            self._items[key] = blobs  # newest last
            self._bytes += _size(blobs)
            while self._items and (len(self._items) > self.max_ids
                                   or self._bytes > self.max_bytes):
                _, dropped = self._items.popitem(last=False)
                self._bytes -= _size(dropped)


def _blob_request(data: Any, max_file_bytes: int) -> tuple[str, str, bytes]:
    """``(id, kind, file)`` of an ``accept_blobs`` call, or an HTTP 400/413 saying why not."""
    fields, files = getattr(data, "data", None), getattr(data, "files", None)
    if not isinstance(fields, dict) or not isinstance(files, list) or len(files) != 1:
        raise HTTPException(400, "accept_blobs takes one file and its fields")
    key, kind, index = fields.get("id"), fields.get("type"), fields.get("index")
    if not isinstance(key, str) or not 0 < len(key) <= MAX_ID_LENGTH:
        raise HTTPException(400, f"accept_blobs: id must be 1 to {MAX_ID_LENGTH} characters")
    if kind not in _KINDS:
        raise HTTPException(400, f"accept_blobs: type must be one of {_KINDS}")
    if kind == "layer" and str(index) != "0":
        raise HTTPException(400, "accept_blobs: this editor has one layer (index 0)")
    file = files[0][1] if isinstance(files[0], (tuple, list)) and len(files[0]) == 2 else None
    if not isinstance(file, bytes):
        raise HTTPException(400, "accept_blobs: the file is missing")
    if len(file) > max_file_bytes:
        raise HTTPException(413, "accept_blobs: the file is above the upload limit")
    return key, kind, file


class BoundedImageEditor(gr.ImageEditor):
    """``gr.ImageEditor`` whose ``accept_blobs`` and ``preprocess`` are bounded (module doc)."""

    #: A template of ``gr.ImageEditor``: Gradio serves it with the editor's own frontend.
    is_template = True

    # Gradio builds the component's frontend props from the signature of ``__init__``: this one
    # reports ``gr.ImageEditor``'s (``wraps``), whose arguments it passes on (keywords only).
    @functools.wraps(gr.ImageEditor.__init__)
    def __init__(self, **kwargs: Any) -> None:
        store = kwargs.pop("blob_storage", None)
        super().__init__(**kwargs)
        self.blob_storage: BlobStore = (  # type: ignore[assignment]
            store if isinstance(store, BlobStore) else BlobStore())
        # A property update (e.g. the brush size) makes Gradio build a per-session copy from
        # the constructor's arguments: the copy shares this store, so the bounds stay global.
        self.constructor_args["blob_storage"] = self.blob_storage

    def get_block_name(self) -> str:
        """Served with ``gr.ImageEditor``'s frontend (subclasses too)."""
        return "imageeditor"

    def get_block_class(self) -> str:
        """As :meth:`get_block_name`."""
        return "imageeditor"

    @server
    def accept_blobs(self, data: Any) -> None:  # type: ignore[override]
        """Store one canvas image of the browser's next run (bounded; see the module doc)."""
        key, kind, file = _blob_request(data, MAX_UPLOAD_BYTES)
        self.blob_storage.put(key, kind, file)

    def preprocess(self, payload: EditorData | None) -> EditorValue | None:
        """Check the layer count, formats and sizes from the headers, then decode."""
        if payload is not None:
            try:
                check_editor_payload(payload, self.blob_storage)
            except InputError as err:
                if payload.id is not None:
                    self.blob_storage.pop(payload.id)  # as Gradio does once a value is read
                raise gr.Error(str(err), print_exception=False) from None
        return super().preprocess(payload)


def _sources(payload: EditorData, store: BlobStore) -> tuple[list[Any], list[Any]]:
    """``(background and composite, layers)`` of a payload: file paths or bytes (``None``
    where the payload has no picture)."""
    if payload.id is not None:
        blobs = store.get(payload.id)
        if blobs is None:
            return [], []
        return [blobs.background, blobs.composite], list(blobs.layers)
    files = [payload.background, payload.composite]
    return ([file.path for file in files if file is not None],
            [layer.path for layer in payload.layers if layer is not None])


def check_editor_payload(payload: EditorData, store: BlobStore) -> None:
    """Refuse an editor value before decoding: too many layers, formats we do not read,
    pictures too large or too elongated, or too many pixels in all.

    Raises:
        InputError: with a message for the user.
    """
    pictures, layers = _sources(payload, store)
    if len(layers) > MAX_LAYERS:
        raise InputError(f"The editor sends {MAX_LAYERS} brush layer; this request has "
                         f"{len(layers)}.")
    total = 0
    for source in [*pictures, *layers]:
        if source is None:
            continue
        width, height = header_size(source if isinstance(source, bytes) else Path(source))
        check_picture_size(width, height)
        total += width * height
    if total > MAX_EDITOR_PIXELS:
        raise InputError(f"The pictures of this request have {total // 1_000_000} megapixels "
                         f"in all; the limit is {MAX_EDITOR_PIXELS // 1_000_000}.")
