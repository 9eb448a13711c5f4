"""Incremental parser for AWS event streams (``application/vnd.amazon.eventstream``)."""

from __future__ import annotations

import logging

import orjson
from botocore.eventstream import (  # type: ignore[import-untyped]
    EventStreamBuffer,
    EventStreamMessage,
    ParserError,
)

from smartflow.core.errors import MalformedUpstreamResponse

__all__ = ["EXCEPTION_PREFIX", "EventStreamParser"]

logger = logging.getLogger(__name__)

# Prefix of the event name of exception and error frames, followed by the exception
# type (``exception:throttlingException``) or the error code of an ``error`` frame.
EXCEPTION_PREFIX = "exception:"


class EventStreamParser:
    """Split an AWS event stream into (event type, payload text) pairs as chunks arrive.

    Framing and both CRC checks are botocore's ``EventStreamBuffer``. An ``event``
    frame gives its ``:event-type``. An ``exception`` frame gives
    ``"exception:" + :exception-type`` with its JSON payload, and an ``error`` frame
    gives ``"exception:" + :error-code`` with ``{"message": :error-message}``, so a
    stream decoder can raise the matching error. Frames that break the format raise
    ``MalformedUpstreamResponse``.
    """

    def __init__(self, provider: str = "") -> None:
        self.provider = provider
        self._buffer = EventStreamBuffer()
        self._pending = 0

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        self._buffer.add_data(chunk)
        self._pending += len(chunk)
        frames: list[tuple[str | None, str]] = []
        try:
            for message in self._buffer:
                self._pending -= message.prelude.total_length
                frame = self._frame(message)
                if frame is not None:
                    frames.append(frame)
        except ParserError as exc:
            raise MalformedUpstreamResponse(
                f"{self.provider or 'The upstream'} sent an invalid event-stream frame: {exc}",
                provider=self.provider,
            ) from exc
        return frames

    def close(self) -> list[tuple[str | None, str]]:
        """Check that the stream did not end inside a frame."""
        if self._pending:
            raise MalformedUpstreamResponse(
                f"{self.provider or 'The upstream'} stream ended inside an event-stream frame "
                f"({self._pending} bytes of an incomplete frame).",
                provider=self.provider,
            )
        return []

    def _frame(self, message: EventStreamMessage) -> tuple[str | None, str] | None:
        headers = message.headers
        kind = headers.get(":message-type", "event")
        if kind == "error":
            code = str(headers.get(":error-code") or "UnknownError")
            text = str(headers.get(":error-message") or "")
            return EXCEPTION_PREFIX + code, orjson.dumps({"message": text}).decode()
        payload = self._text(message.payload)
        if kind == "exception":
            name = str(headers.get(":exception-type") or "UnknownException")
            return EXCEPTION_PREFIX + name, payload
        if kind != "event":
            logger.debug("ignoring an event-stream frame of message type %r", kind)
            return None
        event_type = headers.get(":event-type")
        return (str(event_type) if event_type is not None else None), payload

    def _text(self, payload: bytes) -> str:
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedUpstreamResponse(
                f"{self.provider or 'The upstream'} sent an event-stream payload that is not "
                "UTF-8.",
                provider=self.provider,
            ) from exc
