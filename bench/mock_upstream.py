"""Fast mock of the OpenAI Chat Completions and Bedrock ConverseStream upstreams, on raw asyncio.

It also takes the usage events a gateway ships (``POST /v1/events``) and discards them.

It is an HTTP/1.1 server that sends fixed replies. It checks neither API keys nor SigV4
signatures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import cast

import orjson
from harness.eventstream import CONVERSE_STREAM_FRAMES

try:
    import uvloop
except ImportError:  # uvloop is optional: the benchmark still runs on the default loop.
    uvloop = None  # type: ignore[assignment]

__all__ = [
    "COMPLETION_BODY",
    "STREAM_EVENTS",
    "HttpRequest",
    "RunningUpstream",
    "UpstreamProtocol",
    "UpstreamState",
    "find_route",
    "make_chat_route",
    "make_converse_stream_route",
    "make_events_route",
    "serve",
]

logger = logging.getLogger(__name__)

MODEL = "bench-model"
CREATED = 1764866400
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024

# The reply text, split into the 17 content deltas of the stream. Joined, it is the message
# content of the non-streamed reply.
CONTENT_PARTS = (
    "A service mesh",
    " moves retries,",
    " timeouts and mutual",
    " TLS out of",
    " your application code",
    " and into a",
    " sidecar proxy that",
    " runs next to",
    " each instance.",
    " You get uniform",
    " traffic policy and",
    " telemetry across services",
    " written in different",
    " languages, at the",
    " cost of one",
    " extra network hop",
    " per call.",
)
USAGE = {
    "prompt_tokens": 212,
    "completion_tokens": 48,
    "total_tokens": 260,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
_COMMON = {"created": CREATED, "model": MODEL, "service_tier": "default"}


def build_completion() -> bytes:
    """Build the JSON body of the non-streamed ``chat.completion`` reply."""
    completion = {
        "id": "chatcmpl-bench0000000000000000000001",
        "object": "chat.completion",
        **_COMMON,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "".join(CONTENT_PARTS),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
        "system_fingerprint": "fp_bench0001",
    }
    return orjson.dumps(completion)


def _chunk(choices: list[object], usage: object = None, obfuscation: str = "") -> bytes:
    chunk = {
        "id": "chatcmpl-bench0000000000000000000002",
        "object": "chat.completion.chunk",
        **_COMMON,
        "system_fingerprint": "fp_bench0001",
        "choices": choices,
        "usage": usage,
    }
    if obfuscation:
        chunk["obfuscation"] = obfuscation
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _delta_choice(delta: dict[str, object], finish_reason: str | None = None) -> list[object]:
    return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]


def build_stream_events() -> tuple[bytes, ...]:
    """Build the SSE events of the streamed reply, as sent with ``include_usage``.

    The events are one role delta, 17 content deltas, the finish delta, the usage chunk
    with empty ``choices`` and ``data: [DONE]``: 21 events, 20 of them JSON chunks.
    """
    events = [_chunk(_delta_choice({"role": "assistant", "content": "", "refusal": None}))]
    for number, part in enumerate(CONTENT_PARTS):
        events.append(_chunk(_delta_choice({"content": part}), obfuscation=f"x{number:03d}"))
    events.append(_chunk(_delta_choice({}, "stop")))
    events.append(_chunk([], usage=USAGE))
    events.append(b"data: [DONE]\n\n")
    return tuple(events)


COMPLETION_BODY = build_completion()
STREAM_EVENTS = build_stream_events()


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


_STREAM_CHUNKS = tuple(_chunked(event) for event in STREAM_EVENTS)
_CONVERSE_STREAM_CHUNKS = tuple(_chunked(frame) for frame in CONVERSE_STREAM_FRAMES)
_CHUNKED_END = b"0\r\n\r\n"


@dataclass(slots=True)
class HttpRequest:
    """One parsed HTTP/1.1 request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


# A route handler returns the bytes to send, one element per write.
Route = Callable[[HttpRequest], list[bytes]]


@dataclass(slots=True)
class UpstreamState:
    """Settings and counters shared by all connections of one server."""

    per_event_writes: bool = True
    date_line: bytes = b""
    requests: int = 0
    errors: int = 0
    connections: int = 0
    # Handlers by exact path.
    routes: dict[str, Route] = field(default_factory=dict)
    # Handlers of the Bedrock runtime paths /model/{modelId}/{operation}, by operation.
    model_routes: dict[str, Route] = field(default_factory=dict)
    # Usage events received on /v1/events.
    events_received: int = 0

    def refresh_date(self) -> None:
        self.date_line = b"Date: " + formatdate(usegmt=True).encode() + b"\r\n"


class _BadRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
}


_OPENAI_HEADERS = b"x-request-id: req_bench\r\nopenai-processing-ms: 0\r\n"
_BEDROCK_HEADERS = b"x-amzn-RequestId: 5f0c3a4e-8b1d-4c2a-9e7f-000000000b1e\r\n"
_BEDROCK_ERROR_NAMESPACE = b"http://internal.amazon.com/coral/com.amazon.bedrock/"


def _head(
    state: UpstreamState,
    status: int,
    content_type: bytes,
    extra: bytes,
    provider_headers: bytes = _OPENAI_HEADERS,
) -> bytes:
    return b"HTTP/1.1 %d %s\r\n%sContent-Type: %s\r\n%s%s\r\n" % (
        status,
        _REASONS.get(status, b"Error"),
        state.date_line,
        content_type,
        provider_headers,
        extra,
    )


def _json_response(
    state: UpstreamState,
    status: int,
    body: bytes,
    close: bool,
    provider_headers: bytes = _OPENAI_HEADERS,
) -> bytes:
    extra = b"Content-Length: %d\r\n" % len(body)
    if close:
        extra += b"Connection: close\r\n"
    return _head(state, status, b"application/json", extra, provider_headers) + body


def _streamed_response(state: UpstreamState, head: bytes, chunks: tuple[bytes, ...]) -> list[bytes]:
    """Return the writes of a chunked body, one per event unless ``per_event_writes`` is off."""
    if state.per_event_writes:
        return [head + chunks[0], *chunks[1:-1], chunks[-1] + _CHUNKED_END]
    return [head + b"".join(chunks) + _CHUNKED_END]


def _error_body(message: str, error_type: str) -> bytes:
    error = {"message": message, "type": error_type, "param": None, "code": None}
    return orjson.dumps({"error": error})


def make_chat_route(state: UpstreamState) -> Callable[[HttpRequest], list[bytes]]:
    """Make the handler of ``POST /v1/chat/completions``, which returns the writes to send."""

    def chat(request: HttpRequest) -> list[bytes]:
        if request.method != "POST":
            body = _error_body(f"method {request.method} is not allowed", "invalid_request_error")
            return [_json_response(state, 405, body, not request.keep_alive)]
        try:
            payload = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            body = _error_body("request body is not valid JSON", "invalid_request_error")
            return [_json_response(state, 400, body, not request.keep_alive)]
        if not (isinstance(payload, dict) and payload.get("stream") is True):
            return [_json_response(state, 200, COMPLETION_BODY, not request.keep_alive)]
        extra = b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n"
        if not request.keep_alive:
            extra += b"Connection: close\r\n"
        head = _head(state, 200, b"text/event-stream; charset=utf-8", extra)
        return _streamed_response(state, head, _STREAM_CHUNKS)

    return chat


def make_events_route(state: UpstreamState) -> Route:
    """Make the handler of ``POST /v1/events``: a sink for a gateway's shipped usage events.

    It parses the batch and responds 200 with the number of events, as the control plane's
    ingest does, so the benchmark measures the gateway's cost of shipping without the
    control plane's cost of storing.
    """

    def events(request: HttpRequest) -> list[bytes]:
        close = not request.keep_alive
        try:
            batch = orjson.loads(request.body)
            count = len(batch["events"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            body = _error_body("body is not a batch of events", "invalid_request_error")
            return [_json_response(state, 422, body, close)]
        state.events_received += count
        return [_json_response(state, 200, orjson.dumps({"stored": count}), close)]

    return events


def _bedrock_error(
    state: UpstreamState, status: int, error_type: str, message: str, close: bool
) -> bytes:
    """Build a Bedrock error response, with the type in x-amzn-ErrorType and the message in JSON."""
    logger.warning("ConverseStream request rejected with %d %s: %s", status, error_type, message)
    headers = _BEDROCK_HEADERS + b"x-amzn-ErrorType: %s:%s\r\n" % (
        error_type.encode(),
        _BEDROCK_ERROR_NAMESPACE,
    )
    body = orjson.dumps({"message": message})
    return _json_response(state, status, body, close, headers)


def make_converse_stream_route(state: UpstreamState) -> Route:
    """Make the handler of ``POST /model/{modelId}/converse-stream``, for any model id.

    The body must be JSON with a non-empty ``messages`` list. The reply is always
    CONVERSE_STREAM_FRAMES, sent with chunked encoding.
    """

    def converse_stream(request: HttpRequest) -> list[bytes]:
        close = not request.keep_alive
        if request.method != "POST":
            message = f"method {request.method} is not supported for ConverseStream"
            return [_bedrock_error(state, 404, "UnknownOperationException", message, close)]
        try:
            payload = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            message = "Malformed input request: the body is not valid JSON"
            return [_bedrock_error(state, 400, "ValidationException", message, close)]
        messages = payload.get("messages") if isinstance(payload, dict) else None
        if not (isinstance(messages, list) and messages):
            message = "Malformed input request: messages must be a non-empty list"
            return [_bedrock_error(state, 400, "ValidationException", message, close)]
        extra = b"Transfer-Encoding: chunked\r\n"
        if close:
            extra += b"Connection: close\r\n"
        head = _head(state, 200, b"application/vnd.amazon.eventstream", extra, _BEDROCK_HEADERS)
        return _streamed_response(state, head, _CONVERSE_STREAM_CHUNKS)

    return converse_stream


def find_route(state: UpstreamState, path: str) -> Route | None:
    """Return the handler of ``path``: an exact route, or a /model/{modelId}/{operation} one."""
    route = state.routes.get(path)
    if route is not None or not path.startswith("/model/"):
        return route
    # "", "model", the model id (percent-encoded, so it has no "/"), the operation.
    parts = path.split("/")
    if len(parts) != 4 or not parts[2]:
        return None
    return state.model_routes.get(parts[3])


def _parse_chunked(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked request body from ``start``, or return None while it is incomplete."""
    parts: list[bytes] = []
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size_text = bytes(buffer[position:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise _BadRequestError(400, "invalid chunk size") from exc
        position = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 4
        if len(buffer) < position + size + 2:
            return None
        parts.append(bytes(buffer[position : position + size]))
        position += size + 2
        if sum(map(len, parts)) > MAX_BODY_BYTES:
            raise _BadRequestError(413, "request body too large")


def parse_request(buffer: bytearray) -> tuple[HttpRequest, int] | None:
    """Parse one request from the start of ``buffer``, or return None while it is incomplete.

    Returns the request and the number of bytes it used. Raises _BadRequestError.
    """
    header_end = buffer.find(b"\r\n\r\n")
    if header_end < 0:
        if len(buffer) > MAX_HEADER_BYTES:
            raise _BadRequestError(431, "request header too large")
        return None
    lines = bytes(buffer[:header_end]).decode("latin-1").split("\r\n")
    try:
        method, path, version = lines[0].split(" ")
    except ValueError as exc:
        raise _BadRequestError(400, "invalid request line") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    body_start = header_end + 4
    if "chunked" in headers.get("transfer-encoding", "").lower():
        decoded = _parse_chunked(buffer, body_start)
        if decoded is None:
            return None
        body, used = decoded
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError as exc:
            raise _BadRequestError(400, "invalid Content-Length") from exc
        if length > MAX_BODY_BYTES:
            raise _BadRequestError(413, "request body too large")
        if len(buffer) < body_start + length:
            return None
        body = bytes(buffer[body_start : body_start + length])
        used = body_start + length
    return HttpRequest(method, path.split("?", 1)[0], headers, body, keep_alive), used


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parses pipelined requests and writes the fixed replies."""

    def __init__(self, state: UpstreamState) -> None:
        self._state = state
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._state.connections += 1

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None and not self._transport.is_closing():
            try:
                parsed = parse_request(self._buffer)
            except _BadRequestError as exc:
                self._reject(exc)
                return
            if parsed is None:
                return
            request, used = parsed
            del self._buffer[:used]
            self._respond(request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def _respond(self, request: HttpRequest) -> None:
        assert self._transport is not None
        route = find_route(self._state, request.path)
        if route is None:
            body = _error_body(f"no route for {request.path}", "invalid_request_error")
            writes = [_json_response(self._state, 404, body, not request.keep_alive)]
            self._state.errors += 1
        else:
            writes = route(request)
            self._state.requests += 1
        for payload in writes:
            self._transport.write(payload)
        if not request.keep_alive:
            self._transport.close()

    def _reject(self, exc: _BadRequestError) -> None:
        assert self._transport is not None
        self._state.errors += 1
        body = _error_body(str(exc), "invalid_request_error")
        self._transport.write(_json_response(self._state, exc.status, body, close=True))
        self._transport.close()


@dataclass(slots=True)
class RunningUpstream:
    """A started mock upstream: its server and the task that keeps the Date header current."""

    server: asyncio.Server
    date_refresher: asyncio.Task[None]

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.date_refresher.cancel()
        self.server.close()
        await self.server.wait_closed()
        with contextlib.suppress(asyncio.CancelledError):
            await self.date_refresher


async def _refresh_date_each_second(state: UpstreamState) -> None:
    while True:
        await asyncio.sleep(1.0)
        state.refresh_date()


async def serve(host: str, port: int, state: UpstreamState) -> RunningUpstream:
    """Start the mock upstream on ``host``:``port`` (0 picks a free port)."""
    loop = asyncio.get_running_loop()
    state.refresh_date()
    state.routes.setdefault("/v1/chat/completions", make_chat_route(state))
    state.model_routes.setdefault("converse-stream", make_converse_stream_route(state))
    state.routes.setdefault("/v1/events", make_events_route(state))
    server = await loop.create_server(lambda: UpstreamProtocol(state), host, port, backlog=1024)
    return RunningUpstream(server, asyncio.create_task(_refresh_date_each_second(state)))


async def _run(args: argparse.Namespace) -> None:
    state = UpstreamState(per_event_writes=not args.single_write)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    running = await serve(args.host, args.port, state)
    logger.info("mock upstream listening on http://%s:%d", args.host, running.port)
    try:
        await stop.wait()
    finally:
        await running.close()
    logger.info(
        "mock upstream stopped: %d requests, %d errors, %d connections, %d usage events",
        state.requests,
        state.errors,
        state.connections,
        state.events_received,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the mock upstream until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="listen port")
    parser.add_argument(
        "--single-write",
        action="store_true",
        help="send a whole stream in one write instead of one write per event",
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the default event loop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    loop_factory = None if args.no_uvloop or uvloop is None else uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
