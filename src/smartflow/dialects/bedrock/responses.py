"""Bedrock Converse responses as canonical responses."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from smartflow.core.errors import MalformedUpstreamResponse
from smartflow.core.types import (
    ChatResponse,
    FinishReason,
    ReasoningPart,
    TextPart,
    ToolCall,
    Usage,
)

__all__ = [
    "STOP_FROM_BEDROCK",
    "finish_reason",
    "matched_stop_sequence",
    "new_response_id",
    "parse_converse_response",
    "parse_usage",
]

# Converse stopReason values (botocore service model 2023-09-30).
STOP_FROM_BEDROCK: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    "malformed_model_output": "error",
    "malformed_tool_use": "error",
}


def new_response_id() -> str:
    """Return a new response id, because Converse bodies and streams carry none."""
    return "bedrock-" + uuid.uuid4().hex


def parse_usage(raw: Any) -> Usage:
    """Convert Converse usage, whose ``inputTokens`` excludes cache reads and writes."""
    if not isinstance(raw, dict):
        return Usage()
    cache_read = raw.get("cacheReadInputTokens") or 0
    cache_write = raw.get("cacheWriteInputTokens") or 0
    return Usage(
        input_tokens=(raw.get("inputTokens") or 0) + cache_read + cache_write,
        output_tokens=raw.get("outputTokens") or 0,
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def finish_reason(stop_reason: Any) -> FinishReason:
    return STOP_FROM_BEDROCK.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def matched_stop_sequence(fields: Any, *, stream: bool) -> str | None:
    """Read the stop sequence Claude reports through additionalModelResponseFields."""
    if not isinstance(fields, dict):
        return None
    if stream:
        fields = fields.get("delta")
        if not isinstance(fields, dict):
            return None
    value = fields.get("stop_sequence")
    return value if isinstance(value, str) else None


def _reasoning(block: dict[str, Any]) -> ReasoningPart:
    if block.get("redactedContent") is not None:
        return ReasoningPart("", redacted_data=block["redactedContent"])
    text = block.get("reasoningText") or {}
    return ReasoningPart(text.get("text") or "", signature=text.get("signature"))


def parse_converse_response(
    body: dict[str, Any], *, provider: str = "bedrock", model: str = ""
) -> ChatResponse:
    """Convert a Converse response body. ``model`` is the model id the request named."""
    message = (body.get("output") or {}).get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        raise MalformedUpstreamResponse(
            "Upstream Converse response has no output.message.content array.", provider=provider
        )
    response = ChatResponse(
        id=new_response_id(),
        model=model,
        finish_reason=finish_reason(body.get("stopReason")),
        usage=parse_usage(body.get("usage")),
        created=int(time.time()),
    )
    if body.get("stopReason") == "stop_sequence":
        response.stop_sequence = matched_stop_sequence(
            body.get("additionalModelResponseFields"), stream=False
        )
    for block in content:
        if "text" in block:
            response.content.append(TextPart(block.get("text") or ""))
        elif "reasoningContent" in block:
            response.content.append(_reasoning(block["reasoningContent"] or {}))
        elif "toolUse" in block:
            tool_use = block["toolUse"] or {}
            response.tool_calls.append(
                ToolCall(
                    id=tool_use.get("toolUseId") or "",
                    name=tool_use.get("name") or "",
                    arguments=orjson.dumps(tool_use.get("input") or {}).decode(),
                )
            )
    return response
