"""Bedrock event streams (ConverseStream, InvokeModelWithResponseStream) as canonical events.

Both decoders take the (event type, payload) pairs of ``transport.eventstream``. An
exception frame arrives as ``exception:<type>`` and raises the matching UpstreamError.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from typing import Any

import orjson

from smartflow.core.errors import MalformedUpstreamResponse
from smartflow.core.stream import (
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    UsageUpdate,
)
from smartflow.core.types import FinishReason, Usage
from smartflow.dialects.anthropic import streaming as anthropic_streaming
from smartflow.dialects.bedrock.errors import parse_stream_exception
from smartflow.dialects.bedrock.responses import (
    finish_reason,
    matched_stop_sequence,
    new_response_id,
    parse_usage,
)
from smartflow.transport.eventstream import EXCEPTION_PREFIX

__all__ = ["ConverseStreamDecoder", "InvokeStreamDecoder"]

logger = logging.getLogger(__name__)


class ConverseStreamDecoder:
    """Turn ConverseStream events into canonical events.

    Bedrock sends usage in ``metadata`` after ``messageStop``, so ``StreamEnd`` waits
    for both. A stream that ends after ``messageStop`` without ``metadata`` still ends
    properly, with unknown usage. A stream that ends before ``messageStop`` is an error.
    """

    def __init__(self, provider: str = "bedrock", model: str = "") -> None:
        self.provider = provider
        self.model = model
        self._started = False
        self._tool_by_block: dict[int, int] = {}
        self._finish: FinishReason = "stop"
        self._stop_sequence: str | None = None
        self._usage: Usage | None = None
        self._stopped = False
        self._ended = False
        self._handlers: dict[str, Callable[[dict[str, Any]], list[StreamEvent]]] = {
            "messageStart": self._message_start,
            "contentBlockStart": self._block_start,
            "contentBlockDelta": self._block_delta,
            "messageStop": self._message_stop,
            "metadata": self._metadata,
        }

    def feed(self, data: str, event: str | None = None) -> list[StreamEvent]:
        if event is None:
            raise MalformedUpstreamResponse(
                "Upstream event-stream frame has no :event-type header.", provider=self.provider
            )
        if event.startswith(EXCEPTION_PREFIX):
            exception_type = event.removeprefix(EXCEPTION_PREFIX)
            raise parse_stream_exception(exception_type, data, provider=self.provider)
        handler = self._handlers.get(event)
        if handler is None or self._ended:
            return []  # contentBlockStop, and event types added later
        payload = orjson.loads(data)
        if not isinstance(payload, dict):
            raise MalformedUpstreamResponse(
                f"Upstream {event} event is not a JSON object.", provider=self.provider
            )
        events = self._start() if event != "messageStart" else []
        return events + handler(payload)

    def close(self) -> list[StreamEvent]:
        if self._ended:
            return []
        if self._stopped:
            logger.warning(
                "%s: stream ended after messageStop without its metadata event, so usage is "
                "unknown",
                self.provider,
            )
            return self._end()
        raise MalformedUpstreamResponse(
            "Upstream stream ended before messageStop.", provider=self.provider
        )

    # --- event handlers ----------------------------------------------------------------

    def _start(self) -> list[StreamEvent]:
        if self._started:
            return []
        self._started = True
        return [StreamStart(id=new_response_id(), model=self.model)]

    def _message_start(self, payload: dict[str, Any]) -> list[StreamEvent]:
        return self._start()

    def _block_start(self, payload: dict[str, Any]) -> list[StreamEvent]:
        tool_use = (payload.get("start") or {}).get("toolUse")
        if not isinstance(tool_use, dict):
            return []
        index = len(self._tool_by_block)
        self._tool_by_block[payload.get("contentBlockIndex", 0)] = index
        return [
            ToolCallStart(
                index=index, id=tool_use.get("toolUseId") or "", name=tool_use.get("name") or ""
            )
        ]

    def _block_delta(self, payload: dict[str, Any]) -> list[StreamEvent]:
        delta = payload.get("delta") or {}
        if "text" in delta:
            text = delta["text"] or ""
            return [TextDelta(text)] if text else []
        if "toolUse" in delta:
            return self._tool_delta(payload.get("contentBlockIndex", 0), delta["toolUse"] or {})
        if "reasoningContent" in delta:
            return self._reasoning_delta(delta["reasoningContent"] or {})
        return []  # citations, images and tool results generated by the model

    def _tool_delta(self, block: int, tool_use: dict[str, Any]) -> list[StreamEvent]:
        index = self._tool_by_block.get(block)
        if index is None:
            raise MalformedUpstreamResponse(
                f"Upstream sent tool input for content block {block}, which is not a tool call.",
                provider=self.provider,
            )
        fragment = tool_use.get("input") or ""
        return [ToolCallDelta(index=index, arguments=fragment)] if fragment else []

    def _reasoning_delta(self, reasoning: dict[str, Any]) -> list[StreamEvent]:
        if reasoning.get("text"):
            return [ReasoningDelta(reasoning["text"])]
        if reasoning.get("signature"):
            return [ReasoningDelta("", signature=reasoning["signature"])]
        # NOTE: redacted reasoning has no canonical stream event, so it is not passed on.
        return []

    def _message_stop(self, payload: dict[str, Any]) -> list[StreamEvent]:
        stop_reason = payload.get("stopReason")
        self._finish = finish_reason(stop_reason)
        if stop_reason == "stop_sequence":
            self._stop_sequence = matched_stop_sequence(
                payload.get("additionalModelResponseFields"), stream=True
            )
        self._stopped = True
        return self._end() if self._usage is not None else []

    def _metadata(self, payload: dict[str, Any]) -> list[StreamEvent]:
        self._usage = parse_usage(payload.get("usage"))
        if self._stopped:
            return self._end()
        return [UsageUpdate(self._usage)]

    def _end(self) -> list[StreamEvent]:
        self._ended = True
        return [StreamEnd(self._finish, stop_sequence=self._stop_sequence, usage=self._usage)]


class InvokeStreamDecoder:
    """Turn InvokeModelWithResponseStream ``chunk`` events carrying Claude's own stream
    events (base64 JSON in ``{"bytes": ...}``) into canonical events."""

    def __init__(self, provider: str = "bedrock") -> None:
        self.provider = provider
        self._anthropic = anthropic_streaming.StreamDecoder(provider)

    def feed(self, data: str, event: str | None = None) -> list[StreamEvent]:
        if event is not None and event.startswith(EXCEPTION_PREFIX):
            exception_type = event.removeprefix(EXCEPTION_PREFIX)
            raise parse_stream_exception(exception_type, data, provider=self.provider)
        if event != "chunk":
            logger.debug("%s: ignoring stream event %r", self.provider, event)
            return []
        payload = orjson.loads(data)
        encoded = payload.get("bytes") if isinstance(payload, dict) else None
        if not isinstance(encoded, str):
            raise MalformedUpstreamResponse(
                "Upstream chunk event has no base64 'bytes' field.", provider=self.provider
            )
        try:
            text = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise MalformedUpstreamResponse(
                f"Upstream chunk event has invalid 'bytes': {exc}.", provider=self.provider
            ) from exc
        return self._anthropic.feed(text)

    def close(self) -> list[StreamEvent]:
        return self._anthropic.close()
