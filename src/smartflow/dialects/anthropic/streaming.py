"""Anthropic Messages streams to and from canonical stream events."""

from __future__ import annotations

from typing import Any

import orjson

from smartflow.core.errors import MalformedUpstreamResponse, SmartflowError
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
from smartflow.dialects.anthropic.errors import error_body, parse_error_object
from smartflow.dialects.anthropic.responses import (
    STOP_FROM_ANTHROPIC,
    message_id,
    parse_usage,
    render_usage,
    stop_reason,
)

__all__ = ["StreamDecoder", "StreamEncoder"]


class StreamDecoder:
    """Turn upstream Anthropic SSE events into canonical events."""

    def __init__(self, provider: str = "anthropic") -> None:
        self.provider = provider
        self._tool_by_block: dict[int, int] = {}
        self._usage = Usage()
        self._finish: FinishReason = "stop"
        self._stop_sequence: str | None = None
        self._ended = False

    def feed(self, data: str, event: str | None = None) -> list[StreamEvent]:
        event = orjson.loads(data)
        if not isinstance(event, dict):
            raise MalformedUpstreamResponse(
                "Upstream stream event is not a JSON object.", provider=self.provider
            )
        kind = event.get("type")
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "message_start":
            message = event.get("message") or {}
            self._usage = parse_usage(message.get("usage"))
            return [
                StreamStart(
                    id=message.get("id") or "", model=message.get("model") or "", usage=self._usage
                )
            ]
        if kind == "message_delta":
            delta = event.get("delta") or {}
            if delta.get("stop_reason"):
                self._finish = STOP_FROM_ANTHROPIC.get(delta["stop_reason"], "stop")
                self._stop_sequence = delta.get("stop_sequence")
            self._usage = parse_usage(event.get("usage"), self._usage)
            return [UsageUpdate(self._usage)]
        if kind == "message_stop":
            self._ended = True
            return [StreamEnd(self._finish, stop_sequence=self._stop_sequence, usage=self._usage)]
        if kind == "error":
            raise parse_error_object(event.get("error"), status=None, provider=self.provider)
        return []  # ping, content_block_stop and event types added later

    def _block_start(self, event: dict[str, Any]) -> list[StreamEvent]:
        block = event.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use":
            index = len(self._tool_by_block)
            self._tool_by_block[event.get("index", 0)] = index
            return [
                ToolCallStart(index=index, id=block.get("id") or "", name=block.get("name") or "")
            ]
        if kind == "text" and block.get("text"):
            return [TextDelta(block["text"])]
        if kind == "thinking" and block.get("thinking"):
            return [ReasoningDelta(block["thinking"])]
        return []

    def _delta(self, event: dict[str, Any]) -> list[StreamEvent]:
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return [TextDelta(delta.get("text") or "")]
        if kind == "input_json_delta":
            index = self._tool_by_block.get(event.get("index", 0))
            if index is None:
                raise MalformedUpstreamResponse(
                    "Upstream sent tool input for a block that is not a tool call.",
                    provider=self.provider,
                )
            partial = delta.get("partial_json") or ""
            return [ToolCallDelta(index=index, arguments=partial)] if partial else []
        if kind == "thinking_delta":
            return [ReasoningDelta(delta.get("thinking") or "")]
        if kind == "signature_delta":
            return [ReasoningDelta("", signature=delta.get("signature"))]
        return []

    def close(self) -> list[StreamEvent]:
        if self._ended:
            return []
        raise MalformedUpstreamResponse(
            "Upstream stream ended before message_stop.", provider=self.provider
        )


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class StreamEncoder:
    """Render canonical events as Anthropic SSE events for a caller.

    Anthropic content blocks are strictly sequential, so a block is closed before
    the next one opens.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._open: str | None = None
        self._open_tool: int | None = None
        self._next_block = 0
        self._usage = Usage()

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        out = _event(
            "content_block_stop", {"type": "content_block_stop", "index": self._next_block - 1}
        )
        self._open = None
        self._open_tool = None
        return out

    def _open_block(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        out += _event(
            "content_block_start",
            {"type": "content_block_start", "index": self._next_block, "content_block": block},
        )
        self._open = kind
        self._next_block += 1
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self._next_block - 1, "delta": delta},
        )

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            out = (
                b""
                if self._open == "text"
                else self._open_block("text", {"type": "text", "text": ""})
            )
            return out + self._delta({"type": "text_delta", "text": event.text})
        if isinstance(event, ToolCallDelta):
            if self._open_tool != event.index:
                # OpenAI-style streams may interleave calls; Anthropic blocks cannot.
                raise MalformedUpstreamResponse(
                    "Upstream interleaved the arguments of parallel tool calls, which cannot be "
                    "rendered as Anthropic content blocks."
                )
            return self._delta({"type": "input_json_delta", "partial_json": event.arguments})
        if isinstance(event, ToolCallStart):
            out = self._open_block(
                "tool_use", {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
            )
            self._open_tool = event.index
            return out
        if isinstance(event, ReasoningDelta):
            out = (
                b""
                if self._open == "thinking"
                else self._open_block(
                    "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                )
            )
            if event.text:
                out += self._delta({"type": "thinking_delta", "thinking": event.text})
            if event.signature:
                out += self._delta({"type": "signature_delta", "signature": event.signature})
            return out
        if isinstance(event, StreamStart):
            if event.usage is not None:
                self._usage = event.usage
            message: dict[str, Any] = {
                "id": message_id(event.id or "gateway"),
                "type": "message",
                "role": "assistant",
                "model": event.model or self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": render_usage(self._usage),
            }
            return _event("message_start", {"type": "message_start", "message": message})
        if isinstance(event, UsageUpdate):
            self._usage = event.usage
            return b""
        if isinstance(event, StreamEnd):
            if event.usage is not None:
                self._usage = event.usage
            out = self._close_block()
            out += _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": stop_reason(event.finish_reason, event.stop_sequence),
                        "stop_sequence": event.stop_sequence,
                    },
                    "usage": render_usage(self._usage),
                },
            )
            return out + _event("message_stop", {"type": "message_stop"})
        raise TypeError(f"unknown stream event {type(event).__name__}")

    def encode_error(self, error: SmartflowError) -> bytes:
        return _event("error", error_body(error))
