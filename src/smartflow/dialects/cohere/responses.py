"""Cohere Chat v2 responses to canonical responses, usage and finish reasons."""

from __future__ import annotations

import time
from typing import Any

from smartflow.core.errors import (
    MalformedUpstreamResponse,
    UpstreamError,
    UpstreamTimeout,
    upstream_error,
)
from smartflow.core.types import (
    ChatResponse,
    FinishReason,
    ReasoningPart,
    TextPart,
    ToolCall,
    Usage,
)

__all__ = ["FINISH_FROM_COHERE", "failed_generation", "parse_response", "parse_usage"]

FINISH_FROM_COHERE: dict[str, FinishReason] = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}


def _count(raw: Any, name: str) -> int | None:
    if not isinstance(raw, dict):
        return None
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def parse_usage(raw: Any) -> Usage:
    """Convert Cohere usage, preferring ``billed_units`` (what Cohere charges) over
    ``tokens`` (raw counts, which include Cohere's prompt template)."""
    if not isinstance(raw, dict):
        return Usage()
    billed, tokens = raw.get("billed_units"), raw.get("tokens")
    input_tokens = _count(billed, "input_tokens")
    if input_tokens is None:
        input_tokens = _count(tokens, "input_tokens") or 0
    output_tokens = _count(billed, "output_tokens")
    if output_tokens is None:
        output_tokens = _count(tokens, "output_tokens") or 0
    cached = _count(raw, "cached_tokens") or 0
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=min(cached, input_tokens),
    )


def failed_generation(reason: str, message: Any, *, provider: str) -> UpstreamError | None:
    """Return the error for a generation that ended with ERROR or TIMEOUT, else None."""
    detail = message if isinstance(message, str) and message else None
    if reason == "TIMEOUT":
        return UpstreamTimeout(
            f"{provider} error: {detail or 'the generation exceeded its time limit.'}",
            provider=provider,
            upstream_type=reason,
        )
    if reason == "ERROR" or detail:
        return upstream_error(
            500,
            f"{provider} error: {detail or 'the generation failed.'}",
            provider=provider,
            upstream_type=reason,
        )
    return None


def parse_response(body: dict[str, Any], *, provider: str = "cohere") -> ChatResponse:
    """Convert a Cohere chat response, raising the upstream error of a failed generation."""
    message = body.get("message")
    if not isinstance(message, dict):
        raise MalformedUpstreamResponse("Upstream response has no message.", provider=provider)
    reason = body.get("finish_reason") or "COMPLETE"
    failure = failed_generation(reason, None, provider=provider)
    if failure is not None:
        raise failure

    response = ChatResponse(
        id=body.get("id") or "",
        # Cohere responses do not name the model, so the dispatcher fills in the deployment's.
        model="",
        finish_reason=FINISH_FROM_COHERE.get(reason, "stop"),
        usage=parse_usage(body.get("usage")),
        created=int(time.time()),
    )
    if isinstance(message.get("tool_plan"), str) and message["tool_plan"]:
        # The plan is the model's reasoning before its tool calls.
        response.content.append(ReasoningPart(message["tool_plan"]))

    content = message.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    for block in content or ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            response.content.append(TextPart(block["text"]))
        elif kind == "thinking" and block.get("thinking"):
            response.content.append(ReasoningPart(block["thinking"]))

    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        response.tool_calls.append(
            ToolCall(
                id=call.get("id") or "",
                name=function.get("name") or "",
                arguments=function.get("arguments") or "{}",
            )
        )
    # NOTE: citations (for documents and grounded tool results) are not carried over,
    # because the canonical response has no place for them.
    return response
