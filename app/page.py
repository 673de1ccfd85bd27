"""What the app adds to the page in the browser: the upload guard and a few styles.

:func:`page_script` returns the JavaScript that ``build_demo`` runs once on page load
(``demo.load(js=...)``, so that ``launch()`` needs no extra arguments). It

* checks a picture chosen or dropped on the editor *before* it is uploaded: over the upload
  limit (bytes) or over the pixel limit, the app's message appears at once in ``#upload-alert``
  and the picture is not loaded (otherwise the editor shows it and the run fails later with a
  silent HTTP 413, or with a decoding error);
* makes the class lists filter by typing: focusing one selects its text, so what you type
  replaces "Random class" instead of being appended to it;
* gives the mask editor keyboard shortcuts (Gradio's editor has only buttons): Ctrl+Z (⌘Z)
  presses its Undo button, Ctrl+Shift+Z and Ctrl+Y its Redo button, while the Edit tab is
  shown and the focus is not in a text field (where the keys keep their usual meaning);
* adds the styles: model-resolution results drawn with crisp (nearest-neighbour) pixels.

The pixel limit is checked from the image header (the browser reads the size without
decoding the picture); pictures that pass are handed on to the editor unchanged.
"""

from __future__ import annotations

import json

__all__ = ["ALERT_ID", "EDITOR_ID", "page_script", "size_text"]

#: The element that shows upload messages.
ALERT_ID = "upload-alert"
#: The mask editor (its Undo / Redo buttons get the keyboard shortcuts).
EDITOR_ID = "editor"

_CSS = """
#results img, #preview img, #compare img, #history img, #editor canvas {
  image-rendering: pixelated;
}
#upload-alert:empty { display: none; }
#upload-alert { color: var(--error-text-color, #b91c1c); font-weight: 600; margin: 4px 0; }
"""

_SCRIPT = """
() => {
  if (window.__hmarGuard) return;
  window.__hmarGuard = true;
  const MAX_BYTES = __MAX_BYTES__, MAX_PIXELS = __MAX_PIXELS__;
  const style = document.createElement('style');
  style.textContent = __CSS__;
  document.head.appendChild(style);
  const say = (text) => {
    const box = document.getElementById('__ALERT__');
    if (box) box.textContent = text;
  };
  const dims = (file) => new Promise((resolve) => {
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      URL.revokeObjectURL(url);
      resolve([img.naturalWidth, img.naturalHeight]);
    };
    img.onerror = () => { URL.revokeObjectURL(url); resolve(null); };
    img.src = url;
  });
  const problem = async (files) => {
    for (const file of files) {
      if (file.size > MAX_BYTES) {
        const mb = (file.size / 1048576).toFixed(1);
        return `The picture is too large to upload (${mb} MB): use one under __SIZE_TEXT__.`;
      }
      const size = await dims(file);
      if (size && size[0] * size[1] > MAX_PIXELS) {
        return `The picture is too large (${size[0]}×${size[1]}): use one under __MP__ megapixels.`;
      }
    }
    return '';
  };
  const passed = new WeakSet();
  const guard = (event, files, replay) => {
    if (passed.has(event) || !event.target.closest || !event.target.closest('#editor')) return;
    if (!files || !files.length) return;
    event.stopImmediatePropagation();
    event.preventDefault();
    const chosen = Array.from(files);
    problem(chosen).then((message) => {
      say(message);
      if (message) { if (event.target.value !== undefined) event.target.value = ''; return; }
      const again = replay(chosen);
      passed.add(again);
      event.target.dispatchEvent(again);
    });
  };
  // class lists: focusing selects the shown choice, so typing filters instead of appending
  window.addEventListener('focusin', (event) => {
    const input = event.target;
    if (input.tagName === 'INPUT' && input.closest && input.closest('.hmar-class-list')) {
      setTimeout(() => input.select(), 0);
    }
  }, true);
  // mask editor: Ctrl+Z = its Undo button, Ctrl+Shift+Z / Ctrl+Y = its Redo button
  const TEXT_TYPES = ['text', 'number', 'search', 'email', 'url', 'password', 'tel'];
  const typing = (el) => !!el && (el.isContentEditable || el.tagName === 'TEXTAREA'
    || el.tagName === 'SELECT' || (el.tagName === 'INPUT' && TEXT_TYPES.includes(el.type)));
  window.addEventListener('keydown', (event) => {
    if (!(event.ctrlKey || event.metaKey) || event.altKey || typing(document.activeElement)) {
      return;
    }
    const key = event.key.toLowerCase();
    const which = key === 'z' ? (event.shiftKey ? 'Redo' : 'Undo')
      : (key === 'y' && !event.shiftKey ? 'Redo' : null);
    const editor = document.getElementById('__EDITOR__');
    if (!which || !editor || !editor.offsetParent) return;  // the Edit tab is hidden
    const button = editor.querySelector(`button[aria-label="${which}"]`);
    if (!button || button.disabled) return;
    event.preventDefault();
    button.click();
  });
  window.addEventListener('change', (event) => {
    if (event.target.type !== 'file') return;
    guard(event, event.target.files, () => new Event('change', {bubbles: true}));
  }, true);
  window.addEventListener('drop', (event) => {
    guard(event, event.dataTransfer && event.dataTransfer.files, (chosen) => {
      const data = new DataTransfer();
      chosen.forEach((file) => data.items.add(file));
      return new DragEvent('drop', {bubbles: true, cancelable: true, dataTransfer: data});
    });
  }, true);
}
"""

def size_text(max_bytes: int) -> str:
    """``20 * 2**20`` → ``"20 MB"`` (Gradio's "20mb" counts 1 MB as 2^20 bytes)."""
    return f"{max_bytes / 2**20:g} MB"

def page_script(max_bytes: int, max_pixels: int) -> str:
    """The page-load JavaScript for the given upload limits (bytes, pixels)."""

    return (_SCRIPT.replace("__MAX_BYTES__", str(int(max_bytes)))
            .replace("__MAX_PIXELS__", str(int(max_pixels)))
            .replace("__MP__", str(max_pixels // 1_000_000))
            .replace("__SIZE_TEXT__", size_text(max_bytes))
            .replace("__ALERT__", ALERT_ID)
            .replace("__EDITOR__", EDITOR_ID)
            .replace("__CSS__", json.dumps(_CSS)))
