"""``RequestLimits``: an ASGI middleware that caps every request body before Gradio reads it.

Gradio 6 caps each uploaded *file* (``max_file_size``) but not a request: one upload wrote
6 × 15 MB to disk, a request may carry 1,000 files, and an upload aborted half-way left its
temporary file in the cache (issue 17, item 4). Here, for every request with a body:

* a declared ``Content-Length`` above ``max_bytes`` is answered 413 before a byte is read; a
  body without a length (chunked) is answered 411;
* a multipart body (uploads, editor snapshots) is read completely into an anonymous temporary
  file (in memory up to 1 MiB, then a file that has no name on disk, so nothing survives the
  request) while its parts are counted; more than ``max_files`` parts on the upload route (more
  than ``max_files + MAX_FORM_FIELDS`` elsewhere) is answered 413, and a client that goes
  away before the end is simply dropped: Gradio only ever sees complete bodies, so an aborted
  upload leaves nothing behind;
* an event call (``/queue/join``, ``/call/<name>``) is read completely (it is small) and checked
  by :func:`app.call_checks.check_call`: a malformed one is answered 4xx with one log line,
  before Gradio would print a traceback for it;
* an exception that Gradio's routes do not handle is answered 500 with one ERROR log line.

Installed by ``launch.py`` through ``demo.launch(app_kwargs={"middleware": [...]})``
(:func:`middleware`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, BinaryIO

from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request

from .call_checks import CallRefusedError, check_call, is_call_path
from .limits import MAX_UPLOAD_BYTES, MAX_UPLOAD_FILES

__all__ = ["MAX_FORM_FIELDS", "MAX_REQUEST_BYTES", "RequestLimits", "middleware"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Room for the multipart framing and form fields around the files of one request.
_FRAMING_BYTES = 64 * 2**10
#: The largest request body: one upload's files (``MAX_UPLOAD_BYTES``) plus framing.
MAX_REQUEST_BYTES = MAX_UPLOAD_BYTES + _FRAMING_BYTES
#: Form fields a multipart request may carry besides its files (``component_server`` has 6).
MAX_FORM_FIELDS = 8
_SPOOL_BYTES = 2**20
_CHUNK = 64 * 2**10


async def _answer(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _boundary(content_type: bytes) -> bytes | None:
    """The multipart boundary of a Content-Type header, or ``None`` if not multipart."""
    kind, _, params = content_type.partition(b";")
    if kind.strip().lower() != b"multipart/form-data":
        return None
    for param in params.split(b";"):
        name, _, value = param.strip().partition(b"=")
        if name.strip().lower() == b"boundary" and value.strip(b'" '):
            return value.strip(b'" ')
    return b""


class _PartCounter:
    """Counts the parts of a multipart body fed in chunks (delimiter lines not at its end)."""

    def __init__(self, boundary: bytes) -> None:
        self._pattern = b"--" + boundary + b"\r\n"
        self._tail = b""
        self.parts = 0

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        self.parts += data.count(self._pattern)
        keep = len(self._pattern) - 1
        self._tail = data[-keep:] if keep else b""


class RequestLimits:
    """ASGI middleware: bounded request bodies and part counts (module doc)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_REQUEST_BYTES,
                 max_files: int = MAX_UPLOAD_FILES) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_files = max_files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self._run(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length_header = headers.get(b"content-length")
        if length_header is None:
            if b"transfer-encoding" in headers:
                await _answer(send, 411, "A request body needs a Content-Length.")
                return
            await self._run(scope, receive, send)  # no body
            return
        try:
            length = int(length_header)
        except ValueError:
            await _answer(send, 400, "Invalid Content-Length.")
            return
        if length > self.max_bytes:
            logger.info("refused a %d-byte request to %s (limit %d)", length,
                        scope.get("path"), self.max_bytes)
            await _answer(send, 413, f"Request too large: at most {MAX_UPLOAD_BYTES // 2**20} MB "
                                     "per request.")
            return
        path = str(scope.get("path", ""))
        boundary = _boundary(headers.get(b"content-type", b""))
        if boundary is None:
            if is_call_path(path) and "app" in scope and _authenticated(scope):
                await self._checked_call(scope, receive, send, path)
            else:
                await self._run(scope, receive, send)
            return
        max_parts = self.max_files
        if not path.rstrip("/").endswith("/upload"):
            max_parts += MAX_FORM_FIELDS
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as body:
            outcome = await self._buffer(receive, body, boundary, max_parts)
            if outcome is not None:
                if outcome:
                    logger.info("refused a request to %s: %s", scope.get("path"), outcome)
                    await _answer(send, 413, outcome)
                return
            body.seek(0)
            await self._run(scope, _replay(body, receive), send)

    async def _checked_call(self, scope: Scope, receive: Receive, send: Send, path: str
                            ) -> None:
        """Read an event call, refuse it if malformed, else hand it to Gradio."""
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await _answer(send, 413, "Request too large.")
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            check_call(scope["app"].get_blocks(), path, body)
        except CallRefusedError as refusal:
            logger.warning("refused a call to %s: %s", path, refusal)
            await _answer(send, refusal.status, f"Refused: {refusal}")
            return
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as buffered:
            buffered.write(body)
            buffered.seek(0)
            await self._run(scope, _replay(buffered, receive), send)

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gradio's handling of a request; an exception it does not handle (a malformed
        request to one of its routes, e.g. ``component_server`` without its fields) is logged
        as one line (the traceback at DEBUG) and answered 500, instead of a traceback."""
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            return  # the client left: nobody to answer
        except Exception as err:
            if started:
                raise
            detail = (str(err).strip().splitlines() or [""])[0][:200]
            logger.error("request to %s failed: %s: %s", scope.get("path"),
                         type(err).__name__, detail)
            logger.debug("the failure in full", exc_info=True)
            await _answer(send, 500, "Internal error: the request could not be processed.")

    async def _buffer(self, receive: Receive, body: BinaryIO, boundary: bytes,
                      max_parts: int) -> str | None:
        """Read the whole body into ``body``; ``None`` when complete, ``""`` when the client
        left, else why it is refused."""
        counter = _PartCounter(boundary)
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return ""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return "Request too large."
            counter.feed(chunk)
            if counter.parts > max_parts:
                return f"Too many files in one request (at most {self.max_files})."
            body.write(chunk)
            if not message.get("more_body", False):
                return None


def _authenticated(scope: Scope) -> bool:
    """Whether Gradio would let this request through its login check (then the call is
    checked here; otherwise Gradio answers 401 itself, and a stranger learns nothing)."""
    server = scope["app"]
    if getattr(server, "auth", None) is None and getattr(server, "auth_dependency", None) is None:
        return True
    if getattr(server, "auth_dependency", None) is not None:
        return False  # a custom login: leave every check of it to Gradio
    cookies = Request(scope).cookies
    cookie_id = getattr(server, "cookie_id", "")
    token = (cookies.get(f"access-token-{cookie_id}")
             or cookies.get(f"access-token-unsecure-{cookie_id}"))
    return token is not None and token in getattr(server, "tokens", {})


def _replay(body: BinaryIO, receive: Receive) -> Receive:
    """A ``receive`` that hands out the buffered body, then defers to the real one."""
    done = False

    async def replay() -> Message:
        nonlocal done
        if done:
            return await receive()
        chunk = body.read(_CHUNK)
        more = len(chunk) == _CHUNK
        if not more:
            done = True
        return {"type": "http.request", "body": chunk, "more_body": more}

    return replay


def middleware() -> list[Middleware]:
    """The app's middleware list, for ``demo.launch(app_kwargs={"middleware": ...})``."""
    return [Middleware(RequestLimits)]
