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
from smartflow.core.stream import StreamEvent
from smartflow.core.types import ChatResponse
from smartflow.providers.base import FrameParser, Provider, StreamDecoder
from smartflow.usage.builder import UsageBuilder

__all__ = ["ObservingEncoder", "PassthroughTap", "observe_render", "record_passthrough_body"]

logger = logging.getLogger(__name__)


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
    """Decodes a copy of a pass-through stream with the provider's parser and decoder.

    Feed it every chunk in order, the first included. After a chunk it cannot decode it
    stops, because the decoder's state is then unknown.
    """

    def __init__(self, builder: UsageBuilder, provider: Provider) -> None:
        self._builder = builder
        self._provider = provider
        self._parser: FrameParser = provider.frame_parser()
        self._decoder: StreamDecoder = provider.stream_decoder()
        self._stopped = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    def feed(self, chunk: bytes) -> None:
        if self._stopped:
            return
        try:
            for name, data in self._parser.feed(chunk):
                for event in self._decoder.feed(data, name):
                    self._builder.observe(event)
        except (orjson.JSONDecodeError, SmartflowError, KeyError, TypeError, ValueError) as exc:
            # An error event from the provider lands here too; the gateway reports it.
            self._stopped = True
            logger.debug("usage: stopped reading the %s stream: %s", self._provider.name, exc)

    async def wrap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Yield ``chunks`` unchanged, feeding each one to the tap first."""
        async for chunk in chunks:
            self.feed(chunk)
            yield chunk
