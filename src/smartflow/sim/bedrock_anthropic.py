"""InvokeModel with Claude's native Messages body, as Bedrock serves it.

The body is Anthropic's Messages request without ``model`` and ``stream`` and with
``anthropic_version: bedrock-2023-05-31``. The response is an Anthropic ``Message``.
InvokeModelWithResponseStream wraps each Anthropic stream event, JSON-encoded, in the
base64 ``bytes`` of a ``chunk`` event, and adds ``amazon-bedrock-invocationMetrics`` to
``message_stop``. Bedrock checks the body against a JSON schema first (``Malformed input
request`` messages), then Claude applies its own rules, whose messages Bedrock passes on.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from smartflow.sim.bedrock_converse_input import image_matches_format
from smartflow.sim.bedrock_converse_output import split_fragments, thinking_signature
from smartflow.sim.bedrock_errors import validation_error
from smartflow.sim.bedrock_eventstream import chunk_frame
from smartflow.sim.bedrock_models import ModelSpec, anthropic_model_name
from smartflow.sim.bedrock_validation import claude_thinking_budget, malformed_input, type_name
from smartflow.sim.script import SimInput, SimReply, count_tokens, reply, split_chunks

__all__ = [
    "ANTHROPIC_BEDROCK_VERSION",
    "AnthropicCall",
    "anthropic_message",
    "anthropic_stream_chunks",
    "parse_anthropic",
    "run_anthropic",
]

ANTHROPIC_BEDROCK_VERSION = "bedrock-2023-05-31"
# Anthropic's Bedrock client (anthropic 2.17) sends its general API version, such as
# "2026-10-21", instead of the Bedrock one, so dated versions are accepted as well.
_DATED_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_REQUIRED = ("anthropic_version", "max_tokens", "messages")
# NOTE: the key list follows the Bedrock Claude Messages parameter page; "metadata" is
# accepted although that page does not list it.
_SCHEMA_TYPES: dict[str, tuple[str, ...]] = {
    "anthropic_version": ("String",),
    "anthropic_beta": ("JSONArray",),
    "max_tokens": ("Integer",),
    "messages": ("JSONArray",),
    "system": ("String", "JSONArray"),
    "temperature": ("Number", "Integer"),
    "top_p": ("Number", "Integer"),
    "top_k": ("Integer",),
    "stop_sequences": ("JSONArray",),
    "tools": ("JSONArray",),
    "tool_choice": ("JSONObject",),
    "thinking": ("JSONObject",),
    "metadata": ("JSONObject",),
}
_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "stop_sequence": "stop_sequence",
    "tool_calls": "tool_use",
}


@dataclass(slots=True)
class AnthropicCall:
    sim_input: SimInput
    thinking_budget: int | None = None


@dataclass(slots=True)
class AnthropicResult:
    reply: SimReply
    thinking: str | None = None

    @property
    def output_tokens(self) -> int:
        extra = count_tokens(self.thinking) if self.thinking else 0
        return self.reply.output_tokens + extra


def parse_anthropic(body: Any, spec: ModelSpec) -> AnthropicCall:
    """Validate a native Claude body, raising ``BedrockError`` with Bedrock's message."""
    _check_schema(body)
    max_tokens = body["max_tokens"]
    name = anthropic_model_name(spec.model_id)
    if max_tokens < 1:
        raise validation_error("max_tokens: Input should be greater than or equal to 1")
    if max_tokens > spec.max_output_tokens:
        raise validation_error(
            f"max_tokens: {max_tokens} > {spec.max_output_tokens}, which is the maximum allowed "
            f"number of output tokens for {name}"
        )
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None and not 0 <= value <= 1:
            bound = "less than or equal to 1" if value > 1 else "greater than or equal to 0"
            raise validation_error(f"{key}: Input should be {bound}")

    sim_input = SimInput(model=spec.model_id, max_tokens=max_tokens)
    sim_input.texts.extend(_system_texts(body.get("system")))
    sim_input.tools = _tools(body.get("tools") or [])
    sim_input.tool_choice = _tool_choice(body.get("tool_choice"), sim_input.tools)
    sim_input.stop = [str(stop) for stop in body.get("stop_sequences") or []]
    _collect_messages(body["messages"], spec, sim_input)
    try:
        budget = claude_thinking_budget(
            body.get("thinking"), spec, max_tokens=max_tokens, temperature=body.get("temperature")
        )
    except ValueError as exc:
        raise validation_error(str(exc)) from None
    if budget is not None and sim_input.tool_choice != "auto":
        raise validation_error("Thinking may not be enabled when tool_choice forces tool use.")
    return AnthropicCall(sim_input=sim_input, thinking_budget=budget)


def _check_schema(body: Any) -> None:
    if not isinstance(body, dict):
        raise malformed_input(f"#: expected type: JSONObject, found: {type_name(body)}")
    for key in body:
        if key not in _SCHEMA_TYPES:
            raise malformed_input(f"#: extraneous key [{key}] is not permitted")
    for key in _REQUIRED:
        if key not in body:
            raise malformed_input(f"#: required key [{key}] not found")
    for key, value in body.items():
        found = type_name(value)
        if found not in _SCHEMA_TYPES[key]:
            expected = _SCHEMA_TYPES[key][0]
            raise malformed_input(f"#/{key}: expected type: {expected}, found: {found}")
    version = body["anthropic_version"]
    if version != ANTHROPIC_BEDROCK_VERSION and not _DATED_VERSION.match(version):
        # NOTE: the enum wording follows the schema validator's style; the exact
        # Bedrock message for a wrong version is not documented.
        raise malformed_input(f"#/anthropic_version: {version} is not a valid enum value")


def _system_texts(system: Any) -> list[str]:
    if system is None:
        return []
    if isinstance(system, str):
        return [system] if system else []
    texts = []
    for index, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise validation_error(f"system.{index}.type: Input should be 'text'")
        texts.append(str(block.get("text", "")))
    return texts


def _tools(tools: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    specs: list[tuple[str, dict[str, Any]]] = []
    names: set[str] = set()
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise validation_error(f"tools.{index}: Input should be a valid dictionary")
        if tool.get("type") not in (None, "custom"):
            continue  # Anthropic-defined tools such as bash carry no input schema
        name = tool.get("name")
        if not isinstance(name, str) or not name or len(name) > 64 or not _is_tool_name(name):
            raise validation_error(
                f"tools.{index}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            )
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise validation_error(f"tools.{index}.custom.input_schema: Field required")
        if name in names:
            raise validation_error("tools: Tool names must be unique.")
        names.add(name)
        specs.append((name, schema))
    return specs


def _is_tool_name(name: str) -> bool:
    return all(char.isascii() and (char.isalnum() or char in "_-") for char in name)


def _tool_choice(choice: Any, tools: list[tuple[str, dict[str, Any]]]) -> str:
    if choice is None:
        return "auto"
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise validation_error(
            f"tool_choice: Input tag '{kind}' found using 'type' does not match any of the "
            "expected tags: 'auto', 'any', 'tool', 'none'"
        )
    if kind == "tool":
        name = choice.get("name")
        if name not in {tool_name for tool_name, _ in tools}:
            raise validation_error(f"tool_choice.name: Tool '{name}' not found in the tools list.")
        return str(name)
    return {"auto": "auto", "any": "required", "none": "none"}[kind]


def _collect_messages(messages: list[Any], spec: ModelSpec, sim_input: SimInput) -> None:
    if not messages:
        raise validation_error("messages: at least one message is required")
    previous_uses: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise validation_error(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        role = message["role"]
        if index == 0 and role != "user":
            raise validation_error('messages: first message must use the "user" role')
        if index and role == messages[index - 1]["role"]:
            raise validation_error(
                f'messages: roles must alternate between "user" and "assistant", but found '
                f'multiple "{role}" roles in a row'
            )
        blocks = _blocks(message.get("content"), index)
        results = [b for b in blocks if b.get("type") == "tool_result"]
        _check_tool_results(previous_uses, results, index)
        previous_uses = [str(b.get("id")) for b in blocks if b.get("type") == "tool_use"]
        texts = [
            _block_text(block, f"messages.{index}.content.{n}", spec, sim_input)
            for n, block in enumerate(blocks)
        ]
        if role == "user" and any(b.get("type") == "text" for b in blocks):
            sim_input.last_user_text = " ".join(
                str(b["text"]) for b in blocks if b.get("type") == "text"
            )
        sim_input.texts.extend(text for text in texts if text)
        if index == len(messages) - 1 and role == "user":
            sim_input.tool_results = [_result_text(block) for block in results]


def _blocks(content: Any, index: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise validation_error(f"messages.{index}.content: Input should be a valid list")
    for number, block in enumerate(content):
        if not isinstance(block, dict) or "type" not in block:
            raise validation_error(f"messages.{index}.content.{number}.type: Field required")
    return content


def _check_tool_results(uses: list[str], results: list[dict[str, Any]], index: int) -> None:
    result_ids = [str(block.get("tool_use_id")) for block in results]
    unexpected = [rid for rid in result_ids if rid not in uses]
    if unexpected:
        raise validation_error(
            f"messages.{index}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
            f"{', '.join(unexpected)}. Each `tool_result` block must have a corresponding "
            "`tool_use` block in the previous message."
        )
    missing = [use_id for use_id in uses if use_id not in result_ids]
    if missing:
        raise validation_error(
            f"messages.{index - 1}: `tool_use` ids were found without `tool_result` blocks "
            f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
            "corresponding `tool_result` block in the next message."
        )


def _block_text(block: dict[str, Any], path: str, spec: ModelSpec, sim_input: SimInput) -> str:
    kind = block["type"]
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str) or not text:
            raise validation_error("messages: text content blocks must be non-empty")
        return text
    if kind == "image":
        _check_image(block, path, spec)
        sim_input.image_count += 1
        return ""
    if kind == "tool_use":
        return json.dumps(block.get("input"), sort_keys=True)
    if kind == "tool_result":
        return _result_text(block)
    if kind in ("thinking", "redacted_thinking", "document"):
        return str(block.get("thinking", ""))
    raise validation_error(
        f"{path}: Input tag '{kind}' found using 'type' does not match any of the expected tags"
    )


def _check_image(block: dict[str, Any], path: str, spec: ModelSpec) -> None:
    if not spec.vision:
        # NOTE: the wording is the simulator's own. Claude 3.5 Haiku takes no images.
        raise validation_error(f"{path}: this model does not support image input.")
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise validation_error(f"{path}.image.source: only base64 sources are simulated")
    media_type = source.get("media_type")
    if media_type not in _MEDIA_TYPES:
        raise validation_error(
            f"{path}.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
            "'image/gif' or 'image/webp'"
        )
    try:
        data = base64.b64decode(str(source.get("data", "")), validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if not image_matches_format(data, media_type.removeprefix("image/")):
        raise validation_error(
            f"{path}.image.source.base64: The image was specified using the {media_type} media "
            "type, but the image data does not match it."
        )


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    parts = [str(item.get("text", "")) for item in content if isinstance(item, dict)]
    return " ".join(part for part in parts if part)


# --- rendering ----------------------------------------------------------------------------


def run_anthropic(call: AnthropicCall, *, id_prefix: str) -> AnthropicResult:
    """Compute the reply, reasoning first when thinking is enabled."""
    thinking = None
    if call.thinking_budget is not None:
        thinking = f"The user wrote: {call.sim_input.last_user_text or 'nothing'}. I should answer."
        if call.sim_input.max_tokens is not None:
            call.sim_input.max_tokens = max(call.sim_input.max_tokens - count_tokens(thinking), 0)
    return AnthropicResult(reply=reply(call.sim_input, id_prefix=id_prefix), thinking=thinking)


def _content(result: AnthropicResult) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    if result.thinking is not None:
        signature = thinking_signature(result.thinking)
        content.append({"type": "thinking", "thinking": result.thinking, "signature": signature})
    if result.reply.text or not result.reply.tool_calls:
        content.append({"type": "text", "text": result.reply.text})
    for tool_call in result.reply.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": tool_call.id,
                "name": tool_call.name,
                "input": tool_call.arguments,
            }
        )
    return content


def anthropic_message(result: AnthropicResult, spec: ModelSpec, message_id: str) -> dict[str, Any]:
    """Render the InvokeModel response body: an Anthropic ``Message``."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": anthropic_model_name(spec.model_id),
        "content": _content(result),
        "stop_reason": _STOP_REASONS[result.reply.finish],
        "stop_sequence": result.reply.stop_sequence,
        "usage": {"input_tokens": result.reply.input_tokens, "output_tokens": result.output_tokens},
    }


def anthropic_stream_chunks(
    result: AnthropicResult, spec: ModelSpec, message_id: str, latency_ms: int
) -> list[bytes]:
    """Render the reply as InvokeModelWithResponseStream ``chunk`` frames."""
    events: list[dict[str, Any]] = []
    start = anthropic_message(result, spec, message_id)
    start.update(content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = {"input_tokens": result.reply.input_tokens, "output_tokens": 1}
    events.append({"type": "message_start", "message": start})
    for index, block in enumerate(_content(result)):
        events.extend(_block_events(index, block))
    events.append(
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": _STOP_REASONS[result.reply.finish],
                "stop_sequence": result.reply.stop_sequence,
            },
            "usage": {"output_tokens": result.output_tokens},
        }
    )
    metrics = {
        "inputTokenCount": result.reply.input_tokens,
        "outputTokenCount": result.output_tokens,
        "invocationLatency": latency_ms,
        "firstByteLatency": latency_ms,
    }
    events.append({"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics})
    return [chunk_frame(orjson.dumps(event), pad=4) for event in events]


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    kind = block["type"]
    if kind == "thinking":
        opening: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [
            {"type": "thinking_delta", "thinking": piece}
            for piece in split_chunks(block["thinking"])
        ]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif kind == "text":
        opening = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in split_chunks(block["text"])]
    else:
        opening = {**block, "input": {}}
        arguments = json.dumps(block["input"])
        deltas = [
            {"type": "input_json_delta", "partial_json": part}
            for part in split_fragments(arguments)
        ]
    events: list[dict[str, Any]] = [
        {"type": "content_block_start", "index": index, "content_block": opening}
    ]
    events.extend(
        {"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas
    )
    events.append({"type": "content_block_stop", "index": index})
    return events
