"""HTTP for uploads (issue 28): `POST /uploads/` and the downloads it names.

The rules are in `chat.uploads`; this module reads requests and writes
responses. A body over the limit is refused before Django reads it all:
from its Content-Length, and under daphne while it streams in
(`limit_upload_bodies`, which Django's ASGI handler would otherwise spool
whole to disk first). Downloads stream from storage, with `Range` answered.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import IO, Any

import orjson
from django.conf import settings
from django.core.files.storage import default_storage
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.http import content_disposition_header
from django.views.decorators.csrf import csrf_exempt

from chat import uploads
from chat.accounts import counted
from chat.uploads import INLINE_TYPES, MULTIPART_OVERHEAD, UploadError

_CHUNK = 64 * 1024


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": code, "message": message}, status=status)


def _refused(error: UploadError) -> JsonResponse:
    return _error(error.status, error.code, error.message)


class _LimitedTemporaryFileHandler(TemporaryFileUploadHandler):
    """Streams the file to a temporary file, stopping once it passes the limit."""

    def __init__(self, request: HttpRequest, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.received = 0
        self.exceeded = False

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received += len(raw_data)
        if self.received > self.limit:
            self.exceeded = True
            raise StopUpload(connection_reset=True)
        return super().receive_data_chunk(raw_data, start)


def _content_length(request: HttpRequest) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


# CSRF is checked here, after the upload handlers are set (Django's middleware
# would parse the body with the default ones, into memory, before the view).
@csrf_exempt
def upload(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _error(405, "method_not_allowed", "uploads are sent with POST")
    if not request.user.is_authenticated:
        return _error(403, "forbidden", "log in to upload files")
    if not request.META.get("HTTP_X_CSRFTOKEN"):
        return _error(403, "forbidden", "the X-CSRFToken header is missing")
    length = _content_length(request)
    if length is not None and length > settings.CHAT_UPLOAD_MAX_BYTES + MULTIPART_OVERHEAD:
        return _refused(uploads.too_large())
    limit = settings.CHAT_UPLOADS_PER_MINUTE
    if not counted("uploads", str(request.user.pk), limit=limit, window=60):
        return _error(429, "rate_limited", f"at most {limit} uploads a minute; wait a little")
    handler = _LimitedTemporaryFileHandler(request, settings.CHAT_UPLOAD_MAX_BYTES)
    request.upload_handlers = [handler]
    # Reads the body (through `handler`), then compares the header's token.
    refusal = CsrfViewMiddleware(lambda r: HttpResponse()).process_view(request, None, (), {})  # type: ignore[arg-type]
    if handler.exceeded:
        return _refused(uploads.too_large())
    if refusal is not None:
        return _error(403, "forbidden", "the CSRF token is missing or wrong; reload the page")
    files = request.FILES.getlist("file")
    if len(files) != 1:
        return _error(400, "bad_file", "send one file, in the form field `file`")
    received = files[0]
    try:
        stored = uploads.store(request.user, received, received.name or "")
    except UploadError as error:
        return _refused(error)
    finally:
        received.close()
    return JsonResponse(uploads.upload_json(stored), status=201)


def download(request: HttpRequest, upload_id: str) -> HttpResponseBase:
    return _serve(request, upload_id, thumb=False)


def thumbnail(request: HttpRequest, upload_id: str) -> HttpResponseBase:
    return _serve(request, upload_id, thumb=True)


def _not_found() -> JsonResponse:
    return _error(404, "not_found", "no such file")


def _serve(request: HttpRequest, upload_id: str, *, thumb: bool) -> HttpResponseBase:
    """The file to those who may read it (`uploads.may_download`); 404 to anyone else."""
    if request.method not in ("GET", "HEAD"):
        return _error(405, "method_not_allowed", "files are read with GET")
    found = uploads.downloadable(request.user, upload_id)
    name = (found.thumb_name if thumb else found.storage_name) if found else ""
    if found is None or not name:
        return _not_found()
    content_type = "image/webp" if thumb else found.content_type
    inline = content_type in INLINE_TYPES
    disposition = content_disposition_header(not inline, found.name) or ""
    if settings.CHAT_UPLOADS_S3_BUCKET:
        return _guarded(_presigned_redirect(name, content_type, disposition))
    if not default_storage.exists(name):
        return _not_found()
    size = default_storage.size(name)
    response: HttpResponseBase
    try:
        span = _range(request.META.get("HTTP_RANGE", ""), size)
    except _Unsatisfiable:
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return _guarded(response)
    file = default_storage.open(name, "rb")
    if span is None:
        response = FileResponse(file, content_type=content_type)
        response["Content-Length"] = str(size)
    else:
        start, end = span
        response = StreamingHttpResponse(
            _read_span(file, start, end - start + 1), status=206, content_type=content_type
        )
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
        response["Content-Length"] = str(end - start + 1)
    response["Content-Disposition"] = disposition
    response["Accept-Ranges"] = "bytes"
    return _guarded(response)


def _presigned_redirect(name: str, content_type: str, disposition: str) -> HttpResponseBase:
    """302 to the object store: a URL valid for 60 s, answering with our headers' values.

    The store sends the type, disposition and caching asked for here; it
    cannot send nosniff or the sandbox, so an object is never served inline
    unless its type is one of the four image types.
    """
    store: Any = default_storage  # django-storages' S3Storage: url() takes more
    url = store.url(
        name,
        parameters={
            "ResponseContentType": content_type,
            "ResponseContentDisposition": disposition,
            "ResponseCacheControl": "private",
        },
        expire=60,
    )
    return HttpResponseRedirect(url)


def _guarded(response: HttpResponseBase) -> HttpResponseBase:
    """Nothing a user uploaded runs as the site: not sniffed, sandboxed, never shared."""
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private"
    return response


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Unsatisfiable(Exception):
    pass


def _range(header: str, size: int) -> tuple[int, int] | None:
    """One byte range of `size` as (first, last); None for the whole file.

    Several ranges, or a header that is not a byte range, get the whole file
    (as RFC 9110 allows).
    """
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0:
            raise _Unsatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise _Unsatisfiable
    return start, end


def _read_span(file: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    try:
        file.seek(start)
        while length > 0:
            chunk = file.read(min(_CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk
    finally:
        file.close()


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def limit_upload_bodies(app: ASGIApp) -> ASGIApp:
    """ASGI: a `POST /uploads/` body over the limit gets 413 before it is all read.

    From its Content-Length at once; without one, as soon as the bytes
    received pass it (Django is told the client left, and answers nothing).
    """

    async def limited(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/uploads/" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        limit = settings.CHAT_UPLOAD_MAX_BYTES + MULTIPART_OVERHEAD
        for key, value in scope.get("headers", ()):
            if key.lower() == b"content-length" and value.isdigit() and int(value) > limit:
                await _send_too_large(send)
                return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Mapping[str, Any]:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def watching_send(message: Mapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await app(scope, counting_receive, watching_send)
        if exceeded and not started:
            await _send_too_large(send)

    return limited


async def _send_too_large(send: Send) -> None:
    error = uploads.too_large()
    body = orjson.dumps({"error": error.code, "message": error.message})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
