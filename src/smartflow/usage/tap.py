"""Read usage out of responses on their way to the caller, without changing a byte.

A translated response passes through the canonical model, so ``ObservingEncoder`` receives
each stream event and ``observe_render`` each complete response. A pass-through response
is the provider's own bytes, so ``PassthroughTap`` and ``record_passthrough_body`` decode
a copy with the provider's parser. Reading usage must never break a response, so a part
that cannot be decoded stops the tap and is logged at DEBUG.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from smartflow.core.errors import SmartflowError
from smartflow.core.stream import StreamEnd, StreamEvent, StreamStart, UsageUpdate
from smartflow.core.types import ChatResponse
from smartflow.providers.base import FrameParser, Provider, StreamDecoder
from smartflow.transport.sse import SSEParser
from smartflow.usage.builder import UsageBuilder

__all__ = ["ObservingEncoder", "PassthroughTap", "observe_render", "record_passthrough_body"]

logger = logging.getLogger(__name__)

_TAIL_EVENTS = 3
"""Events read from the end of a pass-through stream: the finish reason, the usage and the
end marker of OpenAI; the block end, message_delta and message_stop of Anthropic."""
_MAX_PENDING_BYTES = 256 * 1024


class _Encoder(Protocol):
    def encode(self, event: StreamEvent) -> bytes: ...

    def encode_error(self, error: SmartflowError) -> bytes: ...


class ObservingEncoder:
    """An ingress stream encoder that shows each event to a ``UsageBuilder`` first."""

    def __init__(self, inner: _Encoder, builder: UsageBuilder) -> None:
        self._inner = inner
        self._builder = builder

    def encode(self, event: StreamEvent) -> bytes:
        self._builder.observe(event)
        return self._inner.encode(event)

    def encode_error(self, error: SmartflowError) -> bytes:
        return self._inner.encode_error(error)


def observe_render(render: Callable[[Any], bytes], builder: UsageBuilder) -> Callable[[Any], bytes]:
    """Wrap a ``render_response`` so the builder records each canonical response."""

    def observed(response: Any) -> bytes:
        if isinstance(response, ChatResponse):
            builder.record_response(response)
        return render(response)

    return observed


def record_passthrough_body(builder: UsageBuilder, provider: Provider, body: bytes) -> bool:
    """Decode a pass-through response body with the provider's parser and record it.

    Returns whether the usage was recorded.
    """
    try:
        data = orjson.loads(body)
        if not isinstance(data, dict):
            return False
        response = provider.parse_response(data)
    except (orjson.JSONDecodeError, SmartflowError, KeyError, TypeError, ValueError) as exc:
        logger.debug("usage: cannot read the %s response body: %s", provider.name, exc)
        return False
    builder.record_response(response)
    return True


class PassthroughTap:
    """Reads the usage of a pass-through stream with the provider's parser and decoder.

    Feed it every chunk in order, the first included. It only keeps the chunks in a list,
    and the builder's ``finish`` calls ``settle``, which decodes them. For a server-sent event
    stream it first decodes the first event and the last ``_TAIL_EVENTS`` events only,
    which is enough when the provider reports final usage at the end (OpenAI with
    ``include_usage``, Anthropic). Otherwise it decodes every event in order, as it must
    to estimate the tokens of a stream without usage or one cut part-way. Pending chunks
    above ``_MAX_PENDING_BYTES`` are decoded as they come, which bounds the memory of a
    long stream. After a chunk it cannot decode it stops, because the decoder's state
    is then unknown.
    """

    def __init__(self, builder: UsageBuilder, provider: Provider) -> None:
        self._builder = builder
        self._provider = provider
        self._parser: FrameParser = provider.frame_parser()
        self._decoder: StreamDecoder = provider.stream_decoder()
        self._stopped = False
        self._settled = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        # The first event's bytes once pending chunks have been decoded, else None.
        self._head: bytes | None = None
        self._tail_possible = isinstance(self._parser, SSEParser)
        builder.on_finish(self.settle)

    @property
    def stopped(self) -> bool:
        """Whether a chunk could not be decoded; decodes the pending chunks first."""
        self.settle()
        return self._stopped

    def feed(self, chunk: bytes) -> None:
        if self._settled:
            self._decode([chunk])
            return
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._pending_bytes > _MAX_PENDING_BYTES:
            self._decode_oldest()

    async def wrap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Yield ``chunks`` unchanged, feeding each one to the tap first."""
        async for chunk in chunks:
            self.feed(chunk)
            yield chunk

    def settle(self) -> None:
        """Decode the pending chunks and record their usage; later calls do nothing."""
        if self._settled:
            return
        self._settled = True
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        if not pending or self._stopped:
            return
        if self._tail_possible and self._record_head_and_tail(b"".join(pending)):
            return
        self._decode(pending)

    def _decode(self, chunks: list[bytes]) -> None:
        if self._stopped:
            return
        try:
            for chunk in chunks:
                for name, data in self._parser.feed(chunk):
                    for event in self._decoder.feed(data, name):
                        self._builder.observe(event)
        except (orjson.JSONDecodeError, SmartflowError, KeyError, TypeError, ValueError) as exc:
            # An error event from the provider lands here too; the gateway reports it.
            self._stopped = True
            logger.debug("usage: stopped reading the %s stream: %s", self._provider.name, exc)

    def _decode_oldest(self) -> None:
        """Decode the pending chunks except the newest ``_MAX_PENDING_BYTES // 2`` bytes."""
        if self._tail_possible and self._head is None:
            data = b"".join(self._pending)
            end = data.find(b"\n\n")
            if end < 0 or b"\r" in data:
                self._tail_possible = False
            else:
                self._head = data[: end + 2]
        newest_bytes = 0
        split = len(self._pending)
        while split > 0 and newest_bytes + len(self._pending[split - 1]) <= _MAX_PENDING_BYTES // 2:
            split -= 1
            newest_bytes += len(self._pending[split])
        self._decode(self._pending[:split])
        self._pending = self._pending[split:]
        self._pending_bytes = newest_bytes

    def _record_head_and_tail(self, data: bytes) -> bool:
        """Record the usage from the first and last events of an SSE stream.

        Returns False, having recorded nothing, when those events do not contain the
        stream's start and its end with usage; then every event must be decoded.
        """
        if b"\r" in data:
            return False  # CR line ends: boundaries are not plain blank lines.
        head = self._head
        if head is None:
            end = data.find(b"\n\n")
            if end < 0:
                return False
            head, data = data[: end + 2], data[end + 2 :]
        tail_start = len(data)
        for _ in range(_TAIL_EVENTS + 1):
            found = data.rfind(b"\n\n", 0, tail_start)
            if found < 0:
                if self._head is not None:
                    return False  # the pending bytes may start inside an event
                tail_start = -2
                break
            tail_start = found
        decoder = self._provider.stream_decoder()
        events: list[StreamEvent] = []
        try:
            for name, payload in self._provider.frame_parser().feed(head + data[tail_start + 2 :]):
                events.extend(decoder.feed(payload, name))
        except (orjson.JSONDecodeError, SmartflowError, KeyError, TypeError, ValueError):
            return False
        if not events or not isinstance(events[0], StreamStart):
            return False
        if not any(isinstance(e, StreamEnd) and e.usage is not None for e in events):
            return False
        # Text deltas only matter for an estimate, and the final usage makes one needless.
        for event in events:
            if isinstance(event, StreamStart | StreamEnd | UsageUpdate):
                self._builder.observe(event)
        return True
