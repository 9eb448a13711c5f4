"""Deterministic reply logic shared by every provider simulator.

Each simulator parses its own wire format into a ``SimInput`` (independently of the
gateway's translators, so a translation bug cannot hide behind a matching simulator
bug) and renders the ``SimReply`` back in that format. The rules:

- the last turn carries tool results: the reply is text quoting them;
- tools are offered, tool choice allows them and the last user text asks: one call
  to the first tool, or to the first two tools (the first one twice when only one is
  offered) when that text contains "parallel"; the model "asks" whenever tool choice
  forces a tool, or the user text contains "call" or "tool" or "weather";
- JSON output is requested: a JSON object built from the schema, or ``{"answer": ...}``;
- otherwise: "Hello from <model>. You said: <last user text>", plus a note per image.

Token counts use ``count_tokens``: words and punctuation marks, an estimate only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SimInput",
    "SimReply",
    "SimToolCall",
    "arguments_for_schema",
    "count_tokens",
    "reply",
    "split_chunks",
]

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


@dataclass(slots=True)
class SimInput:
    """The parts of a request a simulator parsed, in provider-neutral terms."""

    model: str
    texts: list[str] = field(default_factory=list)
    """All prompt text in order (system, user, assistant, tool results)."""
    last_user_text: str = ""
    image_count: int = 0
    tools: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    tool_choice: str = "auto"
    """``auto``, ``none``, ``required`` or the name of the one tool to call."""
    tool_results: list[str] = field(default_factory=list)
    """Results sent in the last turn. When non-empty, the reply quotes them."""
    json_schema: dict[str, Any] | None = None
    json_mode: bool = False
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SimToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(slots=True)
class SimReply:
    text: str = ""
    tool_calls: list[SimToolCall] = field(default_factory=list)
    finish: str = "stop"
    """``stop``, ``length``, ``stop_sequence`` or ``tool_calls``; each simulator maps it."""
    stop_sequence: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0


def arguments_for_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Build a deterministic argument object that satisfies a simple JSON schema."""
    properties = schema.get("properties") or {}
    return {name: _value_for(prop) for name, prop in properties.items()}


def _value_for(schema: dict[str, Any]) -> Any:
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "array":
        return [_value_for(schema.get("items") or {"type": "string"})]
    if kind == "object":
        return arguments_for_schema(schema)
    return "sample"


def _wants_tool(sim_input: SimInput) -> bool:
    if sim_input.tool_choice == "none" or not sim_input.tools:
        return False
    if sim_input.tool_choice != "auto":
        return True
    text = sim_input.last_user_text.lower()
    return any(word in text for word in ("call", "tool", "weather"))


def reply(sim_input: SimInput, *, id_prefix: str, call_offset: int = 0) -> SimReply:
    """Compute the simulated model's reply; tool call ids are ``id_prefix`` + a number."""
    input_tokens = sum(count_tokens(t) for t in sim_input.texts) + 3 * sim_input.image_count
    result = SimReply(input_tokens=max(input_tokens, 1))

    if not sim_input.tool_results and _wants_tool(sim_input):
        names = [name for name, _ in sim_input.tools]
        if sim_input.tool_choice not in ("auto", "required"):
            chosen = [sim_input.tool_choice]
        elif "parallel" in sim_input.last_user_text.lower():
            chosen = names[:2] if len(names) > 1 else names[:1] * 2
        else:
            chosen = names[:1]
        schemas = dict(sim_input.tools)
        for number, name in enumerate(chosen):
            arguments = arguments_for_schema(schemas.get(name, {}))
            result.tool_calls.append(
                SimToolCall(
                    id=f"{id_prefix}{call_offset + number:04d}", name=name, arguments=arguments
                )
            )
        result.finish = "tool_calls"
        result.output_tokens = sum(
            count_tokens(c.name) + count_tokens(json.dumps(c.arguments)) for c in result.tool_calls
        )
        return result

    if sim_input.tool_results:
        text = "Tool results received: " + "; ".join(sim_input.tool_results)
    elif sim_input.json_schema is not None:
        text = json.dumps(arguments_for_schema(sim_input.json_schema))
    elif sim_input.json_mode:
        text = json.dumps({"answer": sim_input.last_user_text})
    else:
        text = f"Hello from {sim_input.model}. You said: {sim_input.last_user_text}"
        if sim_input.image_count:
            text += f" I see {sim_input.image_count} image(s)."

    for stop in sim_input.stop:
        position = text.find(stop) if stop else -1
        if position >= 0:
            text = text[:position]
            result.finish = "stop_sequence"
            result.stop_sequence = stop
            break

    limit = sim_input.max_tokens
    if limit is not None and count_tokens(text) > limit:
        text = _truncate_tokens(text, limit)
        result.finish = "length"
        result.stop_sequence = None
    result.text = text
    result.output_tokens = count_tokens(text)
    return result


def _truncate_tokens(text: str, limit: int) -> str:
    if limit <= 0:
        return ""
    matches = list(_TOKEN.finditer(text))
    return text[: matches[limit - 1].end()]


def split_chunks(text: str, size: int = 3) -> list[str]:
    """Split text into pieces of about ``size`` words, keeping the spaces, as a
    provider's stream would deliver them."""
    words = re.findall(r"\S+\s*|\s+", text)
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)] or [""]
