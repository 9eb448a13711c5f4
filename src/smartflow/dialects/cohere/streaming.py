"""Cohere Chat v2 stream events to canonical stream events.

The stream is SSE whose JSON payloads name their ``type``: ``message-start``, content
and tool-call events, then ``message-end`` with the finish reason and usage. A failed
generation ends with ``message-end`` whose finish reason is ERROR (with the message in
``delta.error``) or TIMEOUT.
"""

from __future__ import annotations

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
from smartflow.dialects.cohere.responses import FINISH_FROM_COHERE, failed_generation, parse_usage

__all__ = ["StreamDecoder"]


def _delta_message(event: dict[str, Any]) -> dict[str, Any]:
    delta = event.get("delta") or {}
    message = delta.get("message") if isinstance(delta, dict) else None
    return message if isinstance(message, dict) else {}


class StreamDecoder:
    """Turn the events of a Cohere chat stream into canonical events."""

    def __init__(self, provider: str = "cohere") -> None:
        self.provider = provider
        self._started = False
        self._tool_indexes: dict[int, int] = {}
        self._ended = False

    def feed(self, data: str, event: str | None = None) -> list[StreamEvent]:
        payload = orjson.loads(data)
        if not isinstance(payload, dict):
            raise MalformedUpstreamResponse(
                "Upstream stream event is not an object.", provider=self.provider
            )
        kind = payload.get("type")
        events: list[StreamEvent] = []
        if not self._started:
            # message-start comes first, but any other first event also opens the stream.
            self._started = True
            start_id = payload.get("id") if kind == "message-start" else None
            events.append(StreamStart(id=start_id or "", model=""))
        if kind == "content-delta":
            content = _delta_message(payload).get("content") or {}
            if content.get("text"):
                events.append(TextDelta(content["text"]))
            if content.get("thinking"):
                events.append(ReasoningDelta(content["thinking"]))
        elif kind == "content-start":
            # The start event may already carry the first piece of text.
            content = _delta_message(payload).get("content") or {}
            if content.get("text"):
                events.append(TextDelta(content["text"]))
            if content.get("thinking"):
                events.append(ReasoningDelta(content["thinking"]))
        elif kind == "tool-plan-delta":
            plan = _delta_message(payload).get("tool_plan")
            if plan:
                events.append(ReasoningDelta(plan))
        elif kind in ("tool-call-start", "tool-call-delta"):
            events.extend(self._tool_call(payload, start=kind == "tool-call-start"))
        elif kind == "message-end":
            events.extend(self._end(payload))
        # message-start, content-end, tool-call-end, citation and debug events carry
        # nothing the canonical stream keeps.
        return events

    def _tool_call(self, payload: dict[str, Any], *, start: bool) -> list[StreamEvent]:
        upstream_index = payload.get("index", 0)
        call = _delta_message(payload).get("tool_calls") or {}
        function = call.get("function") or {}
        events: list[StreamEvent] = []
        index = self._tool_indexes.get(upstream_index)
        if index is None:
            if not start:
                raise MalformedUpstreamResponse(
                    "Upstream sent tool call arguments before the tool-call-start event.",
                    provider=self.provider,
                )
            index = len(self._tool_indexes)
            self._tool_indexes[upstream_index] = index
            events.append(
                ToolCallStart(index=index, id=call.get("id") or "", name=function.get("name") or "")
            )
        arguments = function.get("arguments")
        if arguments:
            events.append(ToolCallDelta(index=index, arguments=arguments))
        return events

    def _end(self, payload: dict[str, Any]) -> list[StreamEvent]:
        delta = payload.get("delta") or {}
        reason = delta.get("finish_reason") or "COMPLETE"
        failure = failed_generation(reason, delta.get("error"), provider=self.provider)
        if failure is not None:
            raise failure
        self._ended = True
        usage = parse_usage(delta.get("usage"))
        return [
            UsageUpdate(usage),
            StreamEnd(finish_reason=FINISH_FROM_COHERE.get(reason, "stop"), usage=usage),
        ]

    def close(self) -> list[StreamEvent]:
        """Check the end of the byte stream, raising if it was cut before message-end."""
        if self._ended:
            return []
        raise MalformedUpstreamResponse(
            "Upstream stream ended before message-end.", provider=self.provider
        )
