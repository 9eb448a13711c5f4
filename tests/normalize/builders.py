"""Builders of canonical requests for the normalisation tests."""

from __future__ import annotations

from typing import Any

from smartflow.core.types import (
    ChatRequest,
    Message,
    ResponseFormat,
    Sampling,
    TextPart,
    Tool,
    ToolChoice,
)

WEATHER = Tool(
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
SEARCH = Tool(name="search", parameters={"type": "object", "properties": {}})
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


def chat(
    *,
    tools: list[Tool] | None = None,
    tool_choice: ToolChoice | None = None,
    response_format: ResponseFormat | None = None,
    user: str | None = None,
    messages: list[Message] | None = None,
    **sampling: Any,
) -> ChatRequest:
    """Return a two-turn chat request with the given sampling parameters."""
    return ChatRequest(
        model="caller-model",
        messages=messages
        or [
            Message("system", [TextPart("Answer briefly.")]),
            Message("user", [TextPart("What is the capital of France?")]),
        ],
        sampling=Sampling(**sampling),
        tools=list(tools or []),
        tool_choice=tool_choice,
        response_format=response_format,
        user=user,
    )


def json_schema() -> ResponseFormat:
    return ResponseFormat("json_schema", schema=SCHEMA, name="answer", strict=True)
