"""Run one chat through the gateway with an official SDK and reduce the result.

Both SDKs reduce to the same ``Outcome`` so the matrix can assert one way for every
ingress, provider and streaming mode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai

from tests.conftest import VIRTUAL_KEY

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
    },
}
TIME_TOOL = {
    "name": "get_time",
    "description": "Current local time for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@dataclass
class Outcome:
    text: str = ""
    tool_calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    finish: str = ""
    """Finish reason in canonical terms: stop, length or tool_calls."""
    input_tokens: int = 0
    output_tokens: int = 0
    model: str = ""
    """The model the response names; the last non-empty one of a stream."""


_OPENAI_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}
_ANTHROPIC_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


def openai_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=VIRTUAL_KEY, max_retries=0)


def anthropic_client(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=VIRTUAL_KEY, max_retries=0)


# --- OpenAI ingress -------------------------------------------------------------------


def openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": t} for t in tools]


async def openai_chat(
    url: str, model: str, messages: list[dict[str, Any]], *, stream: bool, **params: Any
) -> Outcome:
    client = openai_client(url)
    if not stream:
        response = await client.chat.completions.create(model=model, messages=messages, **params)
        choice = response.choices[0]
        assert response.usage is not None
        return Outcome(
            text=choice.message.content or "",
            tool_calls=[
                (c.id, c.function.name, json.loads(c.function.arguments))
                for c in choice.message.tool_calls or []
            ],
            finish=_OPENAI_FINISH[choice.finish_reason],
            input_tokens=response.usage.prompt_tokens,
            output_tokens=response.usage.completion_tokens,
            model=response.model,
        )
    outcome = Outcome()
    calls: dict[int, list[str]] = {}
    chunks = await client.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        **params,
    )
    async for chunk in chunks:
        outcome.model = chunk.model or outcome.model
        if chunk.usage is not None:
            outcome.input_tokens = chunk.usage.prompt_tokens
            outcome.output_tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            delta = choice.delta
            outcome.text += delta.content or ""
            for call in delta.tool_calls or []:
                entry = calls.setdefault(call.index, ["", "", ""])
                if call.id:
                    entry[0] = call.id
                if call.function and call.function.name:
                    entry[1] = call.function.name
                if call.function and call.function.arguments:
                    entry[2] += call.function.arguments
            if choice.finish_reason:
                outcome.finish = _OPENAI_FINISH[choice.finish_reason]
    outcome.tool_calls = [
        (i, n, json.loads(a or "{}")) for i, n, a in (calls[k] for k in sorted(calls))
    ]
    return outcome


# --- Anthropic ingress ----------------------------------------------------------------


def anthropic_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
        for t in tools
    ]


async def anthropic_chat(
    url: str, model: str, messages: list[dict[str, Any]], *, stream: bool, **params: Any
) -> Outcome:
    client = anthropic_client(url)
    params.setdefault("max_tokens", 1024)
    if stream:
        async with client.messages.stream(model=model, messages=messages, **params) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(model=model, messages=messages, **params)
    outcome = Outcome(
        finish=_ANTHROPIC_FINISH[message.stop_reason or ""],
        input_tokens=message.usage.input_tokens,
        output_tokens=message.usage.output_tokens,
        model=message.model,
    )
    for block in message.content:
        if block.type == "text":
            outcome.text += block.text
        elif block.type == "tool_use":
            outcome.tool_calls.append((block.id, block.name, dict(block.input)))  # type: ignore[arg-type]
    return outcome
