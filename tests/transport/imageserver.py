"""A small HTTP server of test images, redirects and bad responses, and the images it serves."""

from __future__ import annotations

import asyncio
import struct
import zlib
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web

__all__ = ["GIF", "JPEG", "PNG", "WEBP", "Hit", "ImageServer"]


def _png() -> bytes:
    """Build a valid 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PNG = _png()
# Leading bytes of the other formats: enough for magic-byte checks, not decodable images.
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00/\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88"

_STREAM_CHUNK = b"\x00" * (256 * 1024)
STREAM_TOTAL_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class Hit:
    """One request that reached the server."""

    path_qs: str
    host_header: str
    traceparent: str | None = None


@dataclass
class ImageServer:
    """Serves on ``host`` at a free port. ``hits`` records every request, in order.

    Paths: ``/cat.png``, ``/cat.jpg``, ``/cat.gif``, ``/cat.webp`` (correct types),
    ``/mislabelled.png`` (JPEG bytes labelled image/png), ``/fake.png`` (text labelled
    image/png), ``/page.html``, ``/untyped`` (PNG bytes labelled application/octet-stream),
    ``/declared-large.png`` (Content-Length of 10 MiB), ``/endless.png`` (a chunked PNG of
    64 MiB, counted in ``streamed_bytes``), ``/slow.png`` (responds after 30 s),
    ``/redirect?to=URL`` (302), ``/redirect-after-slow?to=URL`` (302 once ``/slow.png``
    was requested), ``/loop`` (302 to itself), ``/no-location`` (302 without
    Location), ``/bad-location`` (302 to an invalid URL) and ``/status/CODE`` (that
    status, with a text body).
    """

    host: str = "127.0.0.1"
    hits: list[Hit] = field(default_factory=list)
    streamed_bytes: int = 0
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> ImageServer:
        app = web.Application()
        app.router.add_get("/{name}", self._handle)
        app.router.add_get("/status/{code}", self._status)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{self.host}:{port}"
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _record(self, request: web.Request) -> None:
        headers = request.headers
        self.hits.append(Hit(request.path_qs, headers.get("Host", ""), headers.get("traceparent")))

    async def _status(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(status=int(request.match_info["code"]), text="no image here")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        name = request.match_info["name"]
        simple = {
            "cat.png": (PNG, "image/png"),
            "cat.jpg": (JPEG, "image/jpeg"),
            "cat.gif": (GIF, "image/gif"),
            "cat.webp": (WEBP, "image/webp"),
            "mislabelled.png": (JPEG, "image/png"),
            "fake.png": (b"this is not an image at all", "image/png"),
            "page.html": (b"<html><body>hello</body></html>", "text/html; charset=utf-8"),
        }
        if name in simple:
            body, content_type = simple[name]
            return web.Response(body=body, headers={"Content-Type": content_type})

        if name == "untyped":
            return web.Response(body=PNG, content_type="application/octet-stream")
        if name == "redirect":
            raise web.HTTPFound(request.query["to"])
        if name == "redirect-after-slow":
            await asyncio.wait_for(self.slow_started.wait(), timeout=5)
            raise web.HTTPFound(request.query["to"])
        if name == "loop":
            raise web.HTTPFound("/loop")
        if name == "no-location":
            return web.Response(status=302)
        if name == "bad-location":
            return web.Response(status=302, headers={"Location": "http://[::1"})

        if name == "slow.png":
            self.slow_started.set()
            await asyncio.sleep(30)
            return web.Response(body=PNG, content_type="image/png")
        if name == "declared-large.png":
            return await self._declared_large(request)
        if name == "endless.png":
            return await self._endless(request)
        raise web.HTTPNotFound()

    async def _declared_large(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 10 * 1024 * 1024
        await response.prepare(request)
        try:
            await response.write(PNG)
            await asyncio.sleep(30)  # the client must give up on the header alone
        except ConnectionError:
            pass
        return response

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await response.write(PNG)
            while self.streamed_bytes < STREAM_TOTAL_BYTES:
                await response.write(_STREAM_CHUNK)
                self.streamed_bytes += len(_STREAM_CHUNK)
            await response.write_eof()
        except ConnectionError:
            pass
        return response
