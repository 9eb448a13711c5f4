"""Gemini ``streamGenerateContent?alt=sse`` chunks to canonical stream events.

Each SSE ``data:`` payload is a partial ``GenerateContentResponse``. There is no end
sentinel: the last chunk carries ``finishReason`` (or, for a blocked prompt,
``promptFeedback.blockReason``), so the stream only ends properly if one was seen.
"""

from __future__ import annotations

import logging
import time
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
from smartflow.dialects.gemini.errors import parse_error_object
from smartflow.dialects.gemini.responses import (
    candidate_block_notice,
    candidate_parts,
    first_candidate,
    make_call_id,
    map_finish_reason,
    parse_usage,
    prompt_block_notice,
    tool_arguments,
)

__all__ = ["StreamDecoder"]

logger = logging.getLogger(__name__)


class StreamDecoder:
    """Turn the ``data:`` payloads of a Gemini stream into canonical events."""

    def __init__(self, provider: str = "gemini") -> None:
        self.provider = provider
        self._started = False
        self._response_id = ""
        self._calls = 0
        self._text_seen = False
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self._ended = False

    def feed(self, data: str, event: str | None = None) -> list[StreamEvent]:
        chunk = orjson.loads(data)
        if not isinstance(chunk, dict):
            raise MalformedUpstreamResponse(
                "Upstream stream chunk is not an object.", provider=self.provider
            )
        if chunk.get("error"):
            raise parse_error_object(chunk["error"], status=None, provider=self.provider)
        events: list[StreamEvent] = []
        usage = chunk.get("usageMetadata")
        if isinstance(usage, dict):
            self._usage = parse_usage(usage)
        if not self._started:
            self._started = True
            self._response_id = chunk.get("responseId") or ""
            events.append(
                StreamStart(
                    id=self._response_id,
                    model=chunk.get("modelVersion") or "",
                    created=int(time.time()),
                    usage=self._usage,
                )
            )
        candidates = chunk.get("candidates")
        if isinstance(candidates, list) and candidates:
            candidate = first_candidate(candidates)
            if candidate is not None:
                events.extend(self._candidate(candidate))
        else:
            feedback = chunk.get("promptFeedback")
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                self._finish = "content_filter"
                events.append(TextDelta(prompt_block_notice(feedback)))
        if self._usage is not None and isinstance(usage, dict):
            events.append(UsageUpdate(self._usage))
        return events

    def _candidate(self, candidate: dict[str, Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for part in candidate_parts(candidate):
            events.extend(self._part(part))
        raw_finish = candidate.get("finishReason")
        if raw_finish:
            self._finish = map_finish_reason(raw_finish)
            if self._finish == "content_filter":
                separator = "\n\n" if self._text_seen else ""
                events.append(TextDelta(separator + candidate_block_notice(candidate)))
            elif self._finish == "error":
                logger.warning(
                    "%s: stream %s ended with finishReason %s",
                    self.provider,
                    self._response_id,
                    raw_finish,
                )
        return events

    def _part(self, part: dict[str, Any]) -> list[StreamEvent]:
        call = part.get("functionCall")
        if isinstance(call, dict):
            # NOTE: Vertex AI can stream arguments in ``partialArgs`` when the request
            # sets streamFunctionCallArguments. The gateway never sets it, so every
            # call arrives whole.
            index = self._calls
            self._calls += 1
            call_id = make_call_id(
                call.get("id"),
                part.get("thoughtSignature"),
                response_id=self._response_id,
                index=index,
            )
            return [
                ToolCallStart(index=index, id=call_id, name=call.get("name") or ""),
                ToolCallDelta(index=index, arguments=tool_arguments(call)),
            ]
        text = part.get("text")
        if not isinstance(text, str) or not text:
            return []
        if part.get("thought"):
            return [ReasoningDelta(text)]
        self._text_seen = True
        return [TextDelta(text)]

    def close(self) -> list[StreamEvent]:
        """End the stream, or raise if no chunk carried a finish reason (a cut stream)."""
        if self._ended:
            return []
        if self._finish is None:
            raise MalformedUpstreamResponse(
                "Upstream stream ended before a chunk with a finishReason.",
                provider=self.provider,
            )
        self._ended = True
        finish = self._finish
        if finish == "stop" and self._calls:
            finish = "tool_calls"
        return [StreamEnd(finish_reason=finish, usage=self._usage)]
