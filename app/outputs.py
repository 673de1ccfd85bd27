"""PNG files that the handlers hand to Gradio instead of PIL images.

Why files: for a PIL output Gradio 6 (``processing_utils.save_pil_to_cache``) encodes the image
and writes it to ``<cache>/<content hash>/image.png`` with ``write_bytes`` *every time*, so two
users who get byte-identical pictures (same settings and seed) have the file rewritten in place
while the other one may still be downloading it (h11 "Too little data for declared
Content-Length", client ``RemoteProtocolError``). For a file path Gradio calls
``save_file_to_cache`` instead: it reuses an existing copy and writes a new one to a temporary
name renamed into place, so a file being served is never rewritten.

:class:`OutputFolder` writes each image once, to a fresh sub-folder of a private temporary
folder (outside Gradio's cache), under a stable name (``preview.png``, ``hmar-…-1.png``), so
identical pictures share one cached copy. Gradio copies a handler's output files while it
post-processes that output, before it asks a generator for its next value; so a generator can
:meth:`~OutputFolder.clear` the files of its previous ``yield`` once it runs again, and the
folder is removed when the generator ends (or is closed or collected). The disk used is the
files of the outputs being sent; Gradio's cached copies age out with ``delete_cache``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from pathlib import Path
from types import TracebackType

from gradio.utils import get_upload_folder, is_in_or_equal
from PIL import Image

__all__ = ["OutputFolder"]

logger = logging.getLogger(__name__)


class OutputFolder:
    """A private temporary folder of PNG files, used as a context manager.

    Example::

        with OutputFolder() as files:
            yield files.png(preview, "preview.png")
            files.clear()  # Gradio has copied the previous output by now
            yield files.png(result, "result.png")
    """

    def __init__(self, prefix: str = "hmar-studio-") -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self._count = 0
        # If the system temp folder lies inside Gradio's cache (GRADIO_TEMP_DIR=/tmp), Gradio
        # serves our files in place instead of copying them: then they must stay, and
        # Gradio's ``delete_cache`` ages them out like its own files.
        self._served_in_place = is_in_or_equal(self.root, get_upload_folder())
        if self._served_in_place:
            logger.warning("the temp folder %s is inside Gradio's cache; output files are "
                           "left to Gradio's delete_cache", self.root)
        # Also removed when a generator holding the folder is dropped without being closed.
        self._remove = weakref.finalize(self, shutil.rmtree, self.root, ignore_errors=True)
        if self._served_in_place:
            self._remove.detach()

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def png(self, image: Image.Image, name: str) -> str:
        """Write ``image`` as a PNG called ``name`` (a new file every call); returns its path."""
        self._count += 1
        folder = self.root / f"{self._count:06d}"
        folder.mkdir()
        path = folder / name
        image.save(path, format="PNG")
        return str(path)

    def clear(self) -> None:
        """Delete the files written so far (call once Gradio has copied them)."""
        if self._served_in_place:
            return
        for folder in self.root.iterdir():
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Delete the folder (the files stay where Gradio serves them in place)."""
        self._remove()
