"""What stands between an untrusted upload and the model: size limits, multipart parsing, pixel limits, timeouts.

Every refusal is an :class:`ApiError`, answered as ``{"error": <code>, "detail": <sentence>}`` with a 4xx status
(503 for a timeout), so no bad input reaches the model or crashes the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pneumo.data.decode import PIL_FORMATS, is_dicom, read_dicom
from pneumo.utils.errors import PneumoError

T = TypeVar("T")
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file, allowed on top of the upload limit
FILE_FIELD = "file"


class ApiError(PneumoError):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail

    def body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}


class _BodyTooLarge(Exception):
    pass


RETRY_AFTER_S = "1"  # sent with every 503 (busy or timed out): the request is worth another try


def retry_headers(status: int) -> dict[str, str]:
    """Retry-After for a 503; for a 408, close the connection (the rest of a stalled body is not waited for)."""
    return {"Retry-After": RETRY_AFTER_S} if status == 503 else {"Connection": "close"} if status == 408 else {}


async def send_error(send: Send, error: ApiError) -> None:
    """Answer ``error`` as JSON straight from ASGI middleware (outside FastAPI's exception handlers)."""
    headers = {"content-type": "application/json", "connection": "close", **retry_headers(error.status)}
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(error.body()).encode()})


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, while they arrive: by ``Content-Length`` before reading
    anything, and by counting the received chunks otherwise (chunked uploads), so no body is read unbounded."""

    def __init__(self, app: ASGIApp, max_bytes: int, limit_text: str) -> None:
        self.app, self.max_bytes, self.limit_text = app, max_bytes, limit_text

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        await send_error(send, ApiError(413, "upload_too_large", f"uploads are limited to {self.limit_text}"))


class InFlightLimitMiddleware:
    """Answer 503 at once, before reading the body, when ``max_requests`` uploads (POST requests) are already being
    handled: each holds its upload in memory while it waits for the inference pool, so their number is bounded."""

    def __init__(self, app: ASGIApp, max_requests: int) -> None:
        self.app, self.max_requests, self.in_flight = app, max_requests, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_requests:  # one event loop: no lock needed around the counter
            await send_error(send, ApiError(503, "busy", "too many requests in progress; try again shortly"))
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def pillow_pixel_limit() -> int | None:
    """The image size above which Pillow itself refuses to open a file (``None``: its guard is switched off)."""
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * int(Image.MAX_IMAGE_PIXELS)


def check_limits(*, max_upload_mb: float, max_pixels: int, max_concurrency: int, max_waiting: int) -> None:
    """Refuse service settings that cannot work, with the reason (``ValueError``)."""
    if not max_upload_mb > 0:
        raise ValueError(f"the upload limit must be positive, got {max_upload_mb:g} MB")
    if max_pixels < 1:
        raise ValueError(f"the pixel limit must be positive, got {max_pixels:,}")
    ceiling = pillow_pixel_limit()
    if ceiling is not None and max_pixels > ceiling:  # Pillow would refuse first, under a limit nobody asked for
        raise ValueError(
            f"the pixel limit {max_pixels:,} is above Pillow's own limit of {ceiling:,} pixels; "
            "raise PIL.Image.MAX_IMAGE_PIXELS first"
        )
    if max_concurrency < 1 or max_waiting < 0:
        raise ValueError(f"need max_concurrency >= 1 and max_waiting >= 0, got {max_concurrency} and {max_waiting}")


async def read_upload(request: Request) -> tuple[bytes, str]:
    """The bytes and file name of the multipart field ``file``; :class:`ApiError` for anything else."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the image as multipart/form-data in the field '{FILE_FIELD}' (got {content_type or 'no type'})",
        )
    if request.headers.get("content-length") == "0":
        raise ApiError(400, "empty_body", "the request body is empty")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except HTTPException as exc:  # Starlette's multipart parser reports malformed bodies this way
        raise ApiError(400, "invalid_multipart", str(exc.detail)) from exc
    try:
        upload = form.get(FILE_FIELD)
        if upload is None:
            raise ApiError(422, "missing_file", f"the multipart field '{FILE_FIELD}' is missing")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "missing_file", f"the field '{FILE_FIELD}' must be a file, not a text value")
        data = await upload.read()
        name = Path(upload.filename or "upload").name  # used only in messages and to spot .dcm files
    finally:
        await form.close()
    if not data:
        raise ApiError(400, "empty_file", f"the uploaded file {name!r} is empty")
    return data, name


async def read_upload_within(request: Request, seconds: float) -> tuple[bytes, str]:
    """:func:`read_upload` with a deadline: a client that sends its body slowly, or stops halfway, would otherwise
    hold its in-flight slot for as long as it keeps the connection open (a few such clients lock everyone out)."""
    try:
        return await asyncio.wait_for(read_upload(request), seconds)
    except TimeoutError:
        raise ApiError(408, "upload_timeout", f"the upload did not arrive within {seconds:g} s") from None


def pixel_count(data: bytes, name: str) -> int | None:
    """Pixels announced by the file header (no pixel data decoded); ``None`` when the header is unreadable (the
    decoder then reports why)."""
    try:
        if is_dicom(data, name):
            ds = read_dicom(data, name, stop_before_pixels=True)  # refuses a deflated file before inflating it
            rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
            return rows * cols * int(ds.get("NumberOfFrames", 1) or 1)
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as img:  # reads the header only
            width, height = img.size
            return width * height
    except Image.DecompressionBombError:
        return 1 << 62  # Pillow's own guard fired: far over any limit
    except Exception:  # unreadable header: leave the verdict to the decoder
        return None


def check_pixels(data: bytes, name: str, max_pixels: int) -> None:
    count = pixel_count(data, name)
    if count is not None and count > max_pixels:
        raise ApiError(413, "image_too_large", f"{name}: the image has too many pixels (limit {max_pixels:,})")


class InferenceRunner:
    """Runs blocking work off the event loop in a fixed pool (at most ``max_concurrency`` at once).

    A request that waits or runs longer than ``timeout_s`` gets 503. Work is handed to the pool only when a thread
    is free (a slot of a semaphore, given back when the work ends), so nothing queues inside the executor: a request
    that timed out while waiting leaves nothing behind, while work already running finishes in its thread, still
    holding its slot, so the bound holds. (Submitted at once, timed-out uploads stayed queued in the executor with
    their bytes, past the service's in-flight limit.)
    """

    def __init__(self, max_concurrency: int, timeout_s: float) -> None:
        if max_concurrency < 1 or timeout_s <= 0:
            raise ValueError("max_concurrency must be >= 1 and timeout_s > 0")
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.pool: ThreadPoolExecutor | None = None
        self.slots = asyncio.Semaphore(max_concurrency)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bind(self, loop: asyncio.AbstractEventLoop) -> ThreadPoolExecutor:
        """The pool, started on first use (again after a shutdown), and slots belonging to the running loop: an
        asyncio semaphore binds to one loop, so one app served again (a second lifespan, another test client) gave
        500s ("bound to a different event loop", "cannot schedule new futures after shutdown")."""
        if loop is not self._loop:
            self._loop = loop
            self.slots = asyncio.Semaphore(self.max_concurrency)
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="pneumo-inference")
        return self.pool

    def _timeout(self) -> ApiError:
        return ApiError(503, "timeout", f"the model did not answer within {self.timeout_s:g} s; try again later")

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        pool = self._bind(loop)
        slots = self.slots
        deadline = loop.time() + self.timeout_s
        try:
            await asyncio.wait_for(slots.acquire(), self.timeout_s)
        except TimeoutError:
            raise self._timeout() from None

        def give_back(_: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed (shutdown): nobody waits for the slot
                loop.call_soon_threadsafe(slots.release)

        try:
            future = pool.submit(fn, *args)
        except BaseException:
            slots.release()
            raise
        future.add_done_callback(give_back)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise self._timeout() from None

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
