"""Anthropic message objects to and from the canonical response."""

from __future__ import annotations

from dataclasses import replace
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
    "STOP_FROM_ANTHROPIC",
    "message_id",
    "parse_response",
    "parse_usage",
    "render_response",
    "render_usage",
    "stop_reason",
]

STOP_FROM_ANTHROPIC: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "refusal",
}


def stop_reason(finish: FinishReason, stop_sequence: str | None) -> str:
    if finish == "stop":
        return "stop_sequence" if stop_sequence else "end_turn"
    return {
        "length": "max_tokens",
        "tool_calls": "tool_use",
        "content_filter": "refusal",
        "refusal": "refusal",
        "error": "end_turn",
    }[finish]


def parse_usage(raw: dict[str, Any] | None, previous: Usage | None = None) -> Usage:
    """Convert Anthropic usage, whose ``input_tokens`` excludes cache reads and writes."""
    usage = Usage() if previous is None else replace(previous)
    if not raw:
        return usage
    if raw.get("input_tokens") is not None or raw.get("cache_read_input_tokens") is not None:
        cache_read = raw.get("cache_read_input_tokens") or 0
        cache_write = raw.get("cache_creation_input_tokens") or 0
        usage.input_tokens = (raw.get("input_tokens") or 0) + cache_read + cache_write
        usage.cached_input_tokens = cache_read
        usage.cache_write_tokens = cache_write
    if raw.get("output_tokens") is not None:
        usage.output_tokens = raw["output_tokens"]
    details = raw.get("output_tokens_details") or {}
    if details.get("thinking_tokens") is not None:
        usage.reasoning_tokens = details["thinking_tokens"]
    return usage


def render_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": max(
            usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens, 0
        ),
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
    }


def parse_response(body: dict[str, Any], *, provider: str = "anthropic") -> ChatResponse:
    content = body.get("content")
    if not isinstance(content, list):
        raise MalformedUpstreamResponse("Upstream message has no content array.", provider=provider)
    response = ChatResponse(
        id=body.get("id") or "",
        model=body.get("model") or "",
        finish_reason=STOP_FROM_ANTHROPIC.get(body.get("stop_reason") or "end_turn", "stop"),
        stop_sequence=body.get("stop_sequence"),
        usage=parse_usage(body.get("usage")),
    )
    for block in content:
        kind = block.get("type")
        if kind == "text":
            response.content.append(TextPart(block.get("text") or ""))
        elif kind == "thinking":
            response.content.append(
                ReasoningPart(block.get("thinking") or "", signature=block.get("signature"))
            )
        elif kind == "redacted_thinking":
            response.content.append(ReasoningPart("", redacted_data=block.get("data")))
        elif kind == "tool_use":
            response.tool_calls.append(
                ToolCall(
                    id=block.get("id") or "",
                    name=block.get("name") or "",
                    arguments=orjson.dumps(block.get("input") or {}).decode(),
                )
            )
    return response


def message_id(response_id: str) -> str:
    return response_id if response_id.startswith("msg_") else f"msg_{response_id}"


def _tool_input(arguments: str) -> Any:
    try:
        return orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        # The model produced arguments that are not JSON; keep them visible to the caller.
        return {"_raw_arguments": arguments}


def render_response(response: ChatResponse) -> bytes:
    """Render a canonical response as an Anthropic message JSON body."""
    content: list[dict[str, Any]] = []
    for part in response.content:
        if isinstance(part, ReasoningPart):
            if part.redacted_data is not None:
                content.append({"type": "redacted_thinking", "data": part.redacted_data})
            else:
                content.append(
                    {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}
                )
        elif isinstance(part, TextPart) and part.text:
            content.append({"type": "text", "text": part.text})
    for call in response.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": _tool_input(call.arguments),
            }
        )
    body = {
        "id": message_id(response.id),
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content,
        "stop_reason": stop_reason(response.finish_reason, response.stop_sequence),
        "stop_sequence": response.stop_sequence,
        "usage": render_usage(response.usage),
    }
    return orjson.dumps(body)
