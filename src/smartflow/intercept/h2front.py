"""HTTP/2 for the interception listener.

aiohttp's server speaks HTTP/1.1 only. A connection whose client chose ``h2`` in ALPN is
served here with the ``h2`` package: each complete request stream is sent over a
private Unix socket to the same aiohttp application, and the response is written back
as HTTP/2 frames, streamed as it arrives and within the peer's flow-control window.

NOTE: a request body is buffered whole before its stream is handed on, up to
``server.max_body_bytes``; chat bodies are small, but a large upload waits for its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import aiohttp
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from smartflow.intercept.tls import ServerTLS

__all__ = ["H2Bridge"]

logger = logging.getLogger(__name__)

# Connection-specific headers, which HTTP/2 forbids (RFC 9113 section 8.2.2).
_CONNECTION_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}
)
_MAX_BODY_BYTES = 32 * 1024 * 1024
_MAX_CONCURRENT_STREAMS = 100


class H2Bridge:
    """Creates the HTTP/2 protocol of each connection, and owns the Unix-socket client."""

    def __init__(self, socket_path: Path, tls: ServerTLS) -> None:
        self._socket_path = socket_path
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self._socket_path)),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    def protocol(self) -> asyncio.BaseProtocol:
        return _H2Connection(self)

    def serves(self, ssl_object: object, host: str) -> bool:
        return self._tls.serves(ssl_object, host)  # type: ignore[arg-type]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Stream:
    __slots__ = ("body", "headers", "task")

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers
        self.body = bytearray()
        self.task: asyncio.Task[None] | None = None


class _H2Connection(asyncio.Protocol):
    def __init__(self, bridge: H2Bridge) -> None:
        self._bridge = bridge
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self._conn = h2.connection.H2Connection(config=config)
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._window_open = asyncio.Event()
        self._ssl_object: object = None

    # --- asyncio protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._ssl_object = transport.get_extra_info("ssl_object")
        self._conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: _MAX_CONCURRENT_STREAMS
            },
        )
        self._conn.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            logger.info("intercept: HTTP/2 protocol error from client: %s", exc)
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        for event in events:
            self._handle(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in self._streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self._streams.clear()
        self._window_open.set()

    # --- events -------------------------------------------------------------------

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = [(str(k), str(v)) for k, v in event.headers or []]
            self._streams[event.stream_id] = _Stream(headers)
            if event.stream_ended is not None:
                self._start(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            self._receive_data(event)
        elif isinstance(event, h2.events.StreamEnded):
            self._start(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None and stream.task is not None:
                stream.task.cancel()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window_open.set()
        elif isinstance(event, h2.events.ConnectionTerminated) and self._transport is not None:
            self._transport.close()

    def _receive_data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        assert stream_id is not None
        data = event.data or b""
        self._conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.body += data
        if len(stream.body) > _MAX_BODY_BYTES:
            self._streams.pop(stream_id, None)
            self._conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)

    def _start(self, stream_id: int | None) -> None:
        stream = self._streams.get(stream_id) if stream_id is not None else None
        if stream is None or stream.task is not None or stream_id is None:
            return
        stream.task = asyncio.get_running_loop().create_task(self._serve(stream_id, stream))

    # --- one request ------------------------------------------------------------------

    async def _serve(self, stream_id: int, stream: _Stream) -> None:
        pseudo = {k: v for k, v in stream.headers if k.startswith(":")}
        authority = pseudo.get(":authority", "")
        host = authority.rpartition("@")[2].partition(":")[0].lower()
        headers = [(k, v) for k, v in stream.headers if not k.startswith(":")]
        if not any(k == "host" for k, _ in headers):
            headers.append(("host", authority))
        if not self._bridge.serves(self._ssl_object, host):
            self._respond_plain(stream_id, 421, b"misdirected request\n")
            return
        try:
            async with self._bridge.session().request(
                pseudo.get(":method", "GET"),
                "http://intercept" + pseudo.get(":path", "/"),
                # A list of pairs keeps repeated headers such as cookie.
                headers=headers,
                data=bytes(stream.body) if stream.body else None,
                allow_redirects=False,
            ) as response:
                out = [(":status", str(response.status))]
                out += [
                    (k.lower(), v)
                    for k, v in response.headers.items()
                    if k.lower() not in _CONNECTION_HEADERS
                ]
                self._conn.send_headers(stream_id, out)
                self._flush()
                async for chunk in response.content.iter_any():
                    await self._send(stream_id, chunk)
            self._conn.end_stream(stream_id)
            self._flush()
        except (aiohttp.ClientError, h2.exceptions.StreamClosedError, ConnectionError) as exc:
            logger.info("intercept: HTTP/2 stream %d ended early: %s", stream_id, exc)
            with contextlib.suppress(h2.exceptions.H2Error):
                self._conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                self._flush()
        finally:
            self._streams.pop(stream_id, None)

    async def _send(self, stream_id: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            window = self._conn.local_flow_control_window(stream_id)
            if window <= 0:
                self._window_open.clear()
                await self._window_open.wait()
                if self._transport is None or self._transport.is_closing():
                    raise ConnectionError("the HTTP/2 connection closed")
                continue
            size = min(window, len(view), self._conn.max_outbound_frame_size)
            self._conn.send_data(stream_id, bytes(view[:size]))
            self._flush()
            view = view[size:]

    def _respond_plain(self, stream_id: int, status: int, body: bytes) -> None:
        self._conn.send_headers(
            stream_id,
            [
                (":status", str(status)),
                ("content-type", "text/plain"),
                ("content-length", str(len(body))),
            ],
        )
        self._conn.send_data(stream_id, body, end_stream=True)
        self._flush()
        self._streams.pop(stream_id, None)

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
