"""OpenAI chat.completion.chunk streams to and from canonical stream events."""

from __future__ import annotations

import time
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
from smartflow.dialects.openai.errors import error_body, parse_error_object
from smartflow.dialects.openai.responses import (
    FINISH_FROM_OPENAI,
    FINISH_TO_OPENAI,
    parse_usage,
    render_usage,
)

__all__ = ["StreamDecoder", "StreamEncoder"]

DONE = b"data: [DONE]\n\n"


class StreamDecoder:
    """Turn the ``data:`` payloads of an upstream OpenAI stream into canonical events."""

    def __init__(self, provider: str = "openai") -> None:
        self.provider = provider
        self._started = False
        self._tool_indexes: dict[int, int] = {}
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self._ended = False

    def feed(self, data: str, event: str | None = None) -> list[StreamEvent]:
        if data == "[DONE]":
            return self._end()
        chunk = orjson.loads(data)
        if not isinstance(chunk, dict):
            raise MalformedUpstreamResponse(
                "Upstream stream chunk is not an object.", provider=self.provider
            )
        if chunk.get("error"):
            raise parse_error_object(chunk["error"], status=500, provider=self.provider)
        events: list[StreamEvent] = []
        if not self._started:
            self._started = True
            events.append(
                StreamStart(
                    id=chunk.get("id") or "",
                    model=chunk.get("model") or "",
                    created=chunk.get("created") or 0,
                )
            )
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content")
            if reasoning:
                events.append(ReasoningDelta(reasoning))
            content = delta.get("content")
            if content:
                events.append(TextDelta(content))
            for call in delta.get("tool_calls") or ():
                events.extend(self._tool_call(call))
            reason = choice.get("finish_reason")
            if reason:
                self._finish = FINISH_FROM_OPENAI.get(reason, "stop")
        if chunk.get("usage"):
            self._usage = parse_usage(chunk["usage"])
            events.append(UsageUpdate(self._usage))
        return events

    def _tool_call(self, call: dict[str, Any]) -> list[StreamEvent]:
        upstream_index = call.get("index", 0)
        function = call.get("function") or {}
        events: list[StreamEvent] = []
        index = self._tool_indexes.get(upstream_index)
        if index is None:
            index = len(self._tool_indexes)
            self._tool_indexes[upstream_index] = index
            events.append(
                ToolCallStart(index=index, id=call.get("id") or "", name=function.get("name") or "")
            )
        arguments = function.get("arguments")
        if arguments:
            events.append(ToolCallDelta(index=index, arguments=arguments))
        return events

    def _end(self) -> list[StreamEvent]:
        if self._ended:
            return []
        if self._finish is None:
            raise MalformedUpstreamResponse(
                "Upstream stream ended without a finish reason.", provider=self.provider
            )
        self._ended = True
        return [StreamEnd(finish_reason=self._finish, usage=self._usage)]

    def close(self) -> list[StreamEvent]:
        """Handle the end of the byte stream; a stream cut before [DONE] is an error."""
        if self._ended:
            return []
        if self._finish is not None:
            return self._end()
        raise MalformedUpstreamResponse(
            "Upstream stream ended before its last chunk.", provider=self.provider
        )


class StreamEncoder:
    """Render canonical events as OpenAI ``data:`` chunks for a caller."""

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = "chatcmpl-"
        self.created = int(time.time())
        self._usage: Usage | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text})
        if isinstance(event, ToolCallDelta):
            return self._chunk(
                {"tool_calls": [{"index": event.index, "function": {"arguments": event.arguments}}]}
            )
        if isinstance(event, ToolCallStart):
            call = {
                "index": event.index,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if isinstance(event, StreamStart):
            if event.id:
                self.id = event.id if event.id.startswith("chatcmpl-") else f"chatcmpl-{event.id}"
            if event.created:
                self.created = event.created
            if event.model:
                self.model = event.model
            if event.usage is not None:
                self._usage = event.usage
            return self._chunk({"role": "assistant", "content": "", "refusal": None})
        if isinstance(event, UsageUpdate):
            self._usage = event.usage
            return b""
        if isinstance(event, StreamEnd):
            if event.usage is not None:
                self._usage = event.usage
            out = self._chunk({}, FINISH_TO_OPENAI[event.finish_reason])
            if self.include_usage:
                usage_chunk = {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": render_usage(self._usage or Usage()),
                }
                out += b"data: " + orjson.dumps(usage_chunk) + b"\n\n"
            return out + DONE
        return b""  # reasoning has no place in OpenAI chunks

    def encode_error(self, error: SmartflowError) -> bytes:
        return b"data: " + orjson.dumps(error_body(error)) + b"\n\n"
