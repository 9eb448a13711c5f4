"""OpenAI chat.completion objects to and from the canonical response."""

from __future__ import annotations

import time
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
    "FINISH_FROM_OPENAI",
    "FINISH_TO_OPENAI",
    "parse_response",
    "parse_usage",
    "render_response",
    "render_usage",
]

FINISH_FROM_OPENAI: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}

# OpenAI has no refusal or error finish reason; its content_filter is the nearest.
FINISH_TO_OPENAI: dict[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "refusal": "content_filter",
    "error": "stop",
}


def parse_usage(raw: dict[str, Any] | None) -> Usage:
    if not raw:
        return Usage()
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=raw.get("prompt_tokens") or 0,
        output_tokens=raw.get("completion_tokens") or 0,
        cached_input_tokens=prompt_details.get("cached_tokens") or 0,
        reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
    )


def render_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def parse_response(body: dict[str, Any], *, provider: str = "openai") -> ChatResponse:
    """Convert an upstream chat.completion; only the first choice is kept."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedUpstreamResponse("Upstream response has no choices.", provider=provider)
    choice = choices[0]
    message = choice.get("message") or {}
    response = ChatResponse(
        id=body.get("id") or "",
        model=body.get("model") or "",
        finish_reason=FINISH_FROM_OPENAI.get(choice.get("finish_reason") or "stop", "stop"),
        usage=parse_usage(body.get("usage")),
        created=body.get("created") or int(time.time()),
    )
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        response.content.append(ReasoningPart(reasoning))
    content = message.get("content")
    if isinstance(content, str) and content:
        response.content.append(TextPart(content))
    elif message.get("refusal"):
        response.content.append(TextPart(message["refusal"]))
        response.finish_reason = "refusal"
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        response.tool_calls.append(
            ToolCall(
                id=call.get("id") or "",
                name=function.get("name") or "",
                arguments=function.get("arguments") or "",
            )
        )
    return response


def _completion_id(response_id: str) -> str:
    return response_id if response_id.startswith("chatcmpl-") else f"chatcmpl-{response_id}"


def render_response(response: ChatResponse) -> bytes:
    """Render a canonical response as an OpenAI chat.completion JSON body."""
    text = response.text()
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if response.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in response.tool_calls
        ]
    body = {
        "id": _completion_id(response.id),
        "object": "chat.completion",
        "created": response.created or int(time.time()),
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": FINISH_TO_OPENAI[response.finish_reason],
            }
        ],
        "usage": render_usage(response.usage),
    }
    return orjson.dumps(body)
