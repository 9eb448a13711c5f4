"""Anthropic Messages request bodies to and from the canonical request."""

from __future__ import annotations

from typing import Any

import orjson

from smartflow.core.errors import InvalidRequest
from smartflow.core.types import (
    ChatRequest,
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    ResponseFormat,
    Sampling,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
)
from smartflow.dialects._validate import (
    excerpt,
    expect_bool,
    expect_dict,
    expect_int,
    expect_list,
    expect_number,
    expect_str,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "PARSED_FIELDS",
    "PATCH_FIELDS",
    "build_request",
    "parse_request",
    "patch_body",
]

# Anthropic requires max_tokens; this is used when a request from another dialect
# carries none and no capability profile supplies a default.
DEFAULT_MAX_TOKENS = 4096


def _parse_image(block: dict[str, Any], path: str) -> ImagePart:
    source = expect_dict(block.get("source"), f"{path}.source")
    kind = source.get("type")
    if kind == "base64":
        return ImagePart(
            data=expect_str(source.get("data"), f"{path}.source.data"),
            media_type=expect_str(source.get("media_type"), f"{path}.source.media_type"),
        )
    if kind == "url":
        return ImagePart(url=expect_str(source.get("url"), f"{path}.source.url"))
    raise InvalidRequest(
        f"Unsupported image source type {excerpt(kind)} at '{path}.source.type': "
        "use 'base64' or 'url'.",
        param=f"{path}.source.type",
    )


def _parse_simple_blocks(content: Any, path: str) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)]
    parts: list[Part] = []
    for i, raw in enumerate(expect_list(content, path)):
        block = expect_dict(raw, f"{path}[{i}]")
        kind = block.get("type")
        if kind == "text":
            parts.append(TextPart(expect_str(block.get("text"), f"{path}[{i}].text")))
        elif kind == "image":
            parts.append(_parse_image(block, f"{path}[{i}]"))
        else:
            raise InvalidRequest(
                f"Unsupported block type {excerpt(kind)} at '{path}[{i}].type'.",
                param=f"{path}[{i}].type",
            )
    return parts


def _parse_user(content: Any, path: str) -> list[Message]:
    """Split a user turn into tool-result messages followed by the user's own parts."""
    if isinstance(content, str):
        return [Message("user", [TextPart(content)])]
    messages: list[Message] = []
    parts: list[Part] = []
    for i, raw in enumerate(expect_list(content, path)):
        block_path = f"{path}[{i}]"
        block = expect_dict(raw, block_path)
        kind = block.get("type")
        if kind == "tool_result":
            result = block.get("content", "")
            messages.append(
                Message(
                    "tool",
                    _parse_simple_blocks(result, f"{block_path}.content"),
                    tool_call_id=expect_str(block.get("tool_use_id"), f"{block_path}.tool_use_id"),
                    is_error=bool(block.get("is_error")),
                )
            )
        elif kind == "text":
            parts.append(TextPart(expect_str(block.get("text"), f"{block_path}.text")))
        elif kind == "image":
            parts.append(_parse_image(block, block_path))
        else:
            raise InvalidRequest(
                f"Unsupported content block type {excerpt(kind)} at '{block_path}.type': "
                "use 'text', "
                "'image' or 'tool_result'.",
                param=f"{block_path}.type",
            )
    if parts or not messages:
        messages.append(Message("user", parts))
    return messages


def _parse_assistant(content: Any, path: str) -> Message:
    message = Message("assistant")
    if isinstance(content, str):
        message.content.append(TextPart(content))
        return message
    for i, raw in enumerate(expect_list(content, path)):
        block_path = f"{path}[{i}]"
        block = expect_dict(raw, block_path)
        kind = block.get("type")
        if kind == "text":
            message.content.append(TextPart(expect_str(block.get("text"), f"{block_path}.text")))
        elif kind == "tool_use":
            tool_input = block.get("input", {})
            message.tool_calls.append(
                ToolCall(
                    id=expect_str(block.get("id"), f"{block_path}.id"),
                    name=expect_str(block.get("name"), f"{block_path}.name"),
                    arguments=orjson.dumps(expect_dict(tool_input, f"{block_path}.input")).decode(),
                )
            )
        elif kind == "thinking":
            message.content.append(
                ReasoningPart(block.get("thinking") or "", signature=block.get("signature"))
            )
        elif kind == "redacted_thinking":
            message.content.append(ReasoningPart("", redacted_data=block.get("data")))
        else:
            raise InvalidRequest(
                f"Unsupported content block type {excerpt(kind)} at '{block_path}.type': "
                "use 'text', "
                "'tool_use' or 'thinking'.",
                param=f"{block_path}.type",
            )
    return message


def _parse_system(value: Any) -> list[Message]:
    if isinstance(value, str):
        return [Message("system", [TextPart(value)])] if value else []
    parts = _parse_simple_blocks(value, "system")
    return [Message("system", parts)] if parts else []


def _parse_tools(value: Any) -> list[Tool]:
    tools = []
    for i, raw in enumerate(expect_list(value, "tools")):
        item = expect_dict(raw, f"tools[{i}]")
        kind = item.get("type", "custom")
        if kind != "custom" and "input_schema" not in item:
            raw_name = item.get("name")
            name = raw_name if isinstance(raw_name, str) else str(kind)
            tools.append(Tool(name=name, builtin=item, builtin_dialect="anthropic"))
            continue
        if "input_schema" not in item:
            raise InvalidRequest(
                f"tools[{i}].input_schema: Field required. Give the tool's input as a JSON schema.",
                param=f"tools[{i}].input_schema",
            )
        tools.append(
            Tool(
                name=expect_str(item.get("name"), f"tools[{i}].name"),
                description=item.get("description"),
                parameters=expect_dict(item.get("input_schema"), f"tools[{i}].input_schema"),
                strict=item.get("strict"),
            )
        )
    return tools


def _parse_tool_choice(value: Any, sampling: Sampling) -> ToolChoice:
    choice = expect_dict(value, "tool_choice")
    kind = choice.get("type")
    if choice.get("disable_parallel_tool_use") is not None:
        disable = expect_bool(
            choice["disable_parallel_tool_use"], "tool_choice.disable_parallel_tool_use"
        )
        sampling.parallel_tool_calls = not disable
    if kind == "auto":
        return ToolChoice("auto")
    if kind == "any":
        return ToolChoice("required")
    if kind == "none":
        return ToolChoice("none")
    if kind == "tool":
        return ToolChoice("tool", name=expect_str(choice.get("name"), "tool_choice.name"))
    raise InvalidRequest(
        f"Invalid value for 'tool_choice.type': {excerpt(kind)}. "
        "Use 'auto', 'any', 'tool' or 'none'.",
        param="tool_choice.type",
    )


def _parse_sampling(body: dict[str, Any]) -> Sampling:
    s = Sampling(max_tokens=expect_int(body["max_tokens"], "max_tokens", minimum=0))
    if body.get("temperature") is not None:
        s.temperature = expect_number(body["temperature"], "temperature")
    if body.get("top_p") is not None:
        s.top_p = expect_number(body["top_p"], "top_p")
    if body.get("top_k") is not None:
        s.top_k = expect_int(body["top_k"], "top_k", minimum=1)
    if body.get("stop_sequences") is not None:
        stops = expect_list(body["stop_sequences"], "stop_sequences")
        s.stop = [expect_str(v, f"stop_sequences[{i}]") for i, v in enumerate(stops)]
    thinking = body.get("thinking")
    if thinking is not None:
        thinking = expect_dict(thinking, "thinking")
        if thinking.get("type") == "enabled":
            s.thinking_budget = expect_int(
                thinking.get("budget_tokens"), "thinking.budget_tokens", minimum=1
            )
    output_config = body.get("output_config")
    if isinstance(output_config, dict) and output_config.get("effort") is not None:
        s.reasoning_effort = expect_str(output_config["effort"], "output_config.effort")
    return s


def _parse_output_format(body: dict[str, Any]) -> ResponseFormat | None:
    output_config = body.get("output_config")
    fmt = output_config.get("format") if isinstance(output_config, dict) else None
    fmt = fmt or body.get("output_format")
    if fmt is None:
        return None
    fmt = expect_dict(fmt, "output_config.format")
    if fmt.get("type") != "json_schema":
        raise InvalidRequest(
            "Invalid value for 'output_config.format.type': use 'json_schema'.",
            param="output_config.format.type",
        )
    return ResponseFormat(
        "json_schema", schema=expect_dict(fmt.get("schema"), "output_config.format.schema")
    )


# The top-level body fields parse_request reads. Any other field reaches an upstream of
# the same dialect untouched, and is dropped when the request is translated.
PARSED_FIELDS = frozenset(
    {
        "max_tokens",
        "messages",
        "metadata",
        "model",
        "output_config",
        "output_format",
        "stop_sequences",
        "stream",
        "system",
        "temperature",
        "thinking",
        "tool_choice",
        "tools",
        "top_k",
        "top_p",
    }
)


def parse_request(body: dict[str, Any]) -> ChatRequest:
    """Validate an Anthropic Messages body and convert it; errors name the field."""
    for name in ("model", "max_tokens", "messages"):
        if body.get(name) is None:
            raise InvalidRequest(
                f"{name}: Field required. Add '{name}' to the request body.", param=name
            )
    model = expect_str(body["model"], "model")
    raw_messages = expect_list(body["messages"], "messages")
    messages: list[Message] = []
    if body.get("system") is not None:
        messages.extend(_parse_system(body["system"]))
    for i, raw in enumerate(raw_messages):
        path = f"messages[{i}]"
        item = expect_dict(raw, path)
        role = item.get("role")
        if "content" not in item:
            raise InvalidRequest(f"{path}.content: Field required.", param=f"{path}.content")
        if role == "user":
            messages.extend(_parse_user(item["content"], f"{path}.content"))
        elif role == "assistant":
            messages.append(_parse_assistant(item["content"], f"{path}.content"))
        else:
            raise InvalidRequest(
                f"Invalid value for '{path}.role': {excerpt(role)}. Use 'user' or 'assistant'; the "
                "system prompt goes in the top-level 'system' field.",
                param=f"{path}.role",
            )
    sampling = _parse_sampling(body)
    request = ChatRequest(model=model, messages=messages, sampling=sampling)
    if body.get("tools") is not None:
        request.tools = _parse_tools(body["tools"])
    if body.get("tool_choice") is not None:
        request.tool_choice = _parse_tool_choice(body["tool_choice"], sampling)
    request.response_format = _parse_output_format(body)
    if body.get("stream") is not None:
        request.stream = expect_bool(body["stream"], "stream")
        request.include_usage = True
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        request.user = metadata["user_id"]
    return request


# --- canonical to Anthropic (the provider side) -------------------------------------


def _render_part(part: Part) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, ImagePart):
        if part.url is not None:
            return {"type": "image", "source": {"type": "url", "url": part.url}}
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": part.media_type, "data": part.data},
        }
    if part.redacted_data is not None:
        return {"type": "redacted_thinking", "data": part.redacted_data}
    if part.signature:
        return {"type": "thinking", "thinking": part.text, "signature": part.signature}
    return None  # unsigned reasoning from another provider cannot be replayed to Claude


def _tool_input(call: ToolCall, path: str) -> dict[str, Any]:
    try:
        value = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"Invalid JSON in '{path}': tool call arguments must be a JSON object.", param=path
        ) from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid value for '{path}': expected a JSON object.", param=path)
    return value


def _render_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """Render turns, merging tool results and adjacent same-role turns as Anthropic requires."""
    out: list[dict[str, Any]] = []
    for number, message in enumerate(request.messages):
        if message.role == "system":
            continue
        blocks: list[dict[str, Any]]
        if message.role == "tool":
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": [b for b in (_render_part(p) for p in message.content) if b is not None],
            }
            if message.is_error:
                result["is_error"] = True
            role, blocks = "user", [result]
        elif message.role == "assistant":
            role = "assistant"
            blocks = [b for b in (_render_part(p) for p in message.content) if b is not None]
            for i, call in enumerate(message.tool_calls):
                path = f"messages[{number}].tool_calls[{i}].function.arguments"
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": _tool_input(call, path),
                    }
                )
        else:
            role = "user"
            blocks = [b for b in (_render_part(p) for p in message.content) if b is not None]
        if out and out[-1]["role"] == role:
            previous = out[-1]["content"]
            # Tool results must lead a user turn, so the caller's text goes after them.
            previous.extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


def build_request(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """Render a canonical request as an Anthropic Messages body for ``upstream_model``."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": s.max_tokens if s.max_tokens is not None else DEFAULT_MAX_TOKENS,
        "messages": _render_messages(request),
    }
    system = request.system_text()
    if system:
        body["system"] = system
    if s.temperature is not None:
        body["temperature"] = s.temperature
    if s.top_p is not None:
        body["top_p"] = s.top_p
    if s.top_k is not None:
        body["top_k"] = s.top_k
    if s.stop:
        body["stop_sequences"] = s.stop
    output_config: dict[str, Any] = {}
    if s.thinking_budget is not None:
        if s.thinking_budget > 0:
            body["thinking"] = {"type": "enabled", "budget_tokens": s.thinking_budget}
        else:
            body["thinking"] = {"type": "disabled"}
    elif s.reasoning_effort is not None:
        # Effort-driven models think adaptively; "none" turns thinking off.
        if s.reasoning_effort == "none":
            body["thinking"] = {"type": "disabled"}
        else:
            body["thinking"] = {"type": "adaptive"}
            output_config["effort"] = s.reasoning_effort
    if request.tools:
        body["tools"] = [_render_tool(t, i) for i, t in enumerate(request.tools)]
    choice = _render_tool_choice(request)
    if choice is not None:
        body["tool_choice"] = choice
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        schema = fmt.schema if fmt.type == "json_schema" and fmt.schema else {"type": "object"}
        output_config["format"] = {"type": "json_schema", "schema": schema}
    if output_config:
        body["output_config"] = output_config
    if request.stream:
        body["stream"] = True
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    return body


def _render_tool(tool: Tool, index: int) -> dict[str, Any]:
    if tool.builtin is not None:
        if tool.builtin_dialect != "anthropic":
            raise InvalidRequest(
                f"Tool 'tools[{index}]' is a built-in tool of the {tool.builtin_dialect} "
                "API, which an Anthropic model cannot run. Remove it or route to that provider.",
                param=f"tools[{index}]",
            )
        return tool.builtin
    rendered: dict[str, Any] = {"name": tool.name}
    if tool.description:
        rendered["description"] = tool.description
    rendered["input_schema"] = tool.parameters or {"type": "object", "properties": {}}
    return rendered


def _render_tool_choice(request: ChatRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    parallel = request.sampling.parallel_tool_calls
    if choice is None and (parallel is None or not request.tools):
        return None
    mode = choice.mode if choice is not None else "auto"
    rendered: dict[str, Any]
    if mode == "tool":
        rendered = {"type": "tool", "name": choice.name if choice else None}
    elif mode == "required":
        rendered = {"type": "any"}
    elif mode == "none":
        return {"type": "none"}
    else:
        rendered = {"type": "auto"}
    if parallel is False:
        rendered["disable_parallel_tool_use"] = True
    return rendered


# The body fields that carry each canonical parameter.
PATCH_FIELDS: dict[str, tuple[str, ...]] = {
    "temperature": ("temperature",),
    "top_p": ("top_p",),
    "top_k": ("top_k",),
    "max_tokens": ("max_tokens",),
    "stop": ("stop_sequences",),
    "thinking_budget": ("thinking",),
    "reasoning_effort": ("thinking", "output_config"),
    "parallel_tool_calls": ("tool_choice",),
    "tool_choice": ("tool_choice",),
    "response_format": ("output_config",),
    "user": ("metadata",),
}


def patch_body(
    body: dict[str, Any], request: ChatRequest, params: set[str], model: str
) -> dict[str, Any]:
    """Rewrite only the fields of ``params`` in a pass-through body, from ``request``.

    Everything else, unknown fields included, stays as the caller sent it. An
    ``output_config`` keeps the caller's other keys.
    """
    built = build_request(request, model)
    out = dict(body)
    for param in params:
        for name in PATCH_FIELDS.get(param, ()):
            if name == "output_config":
                merged = {
                    k: v
                    for k, v in (body.get("output_config") or {}).items()
                    if k not in ("effort", "format")
                }
                merged.update(built.get("output_config", {}))
                if merged:
                    out["output_config"] = merged
                else:
                    out.pop("output_config", None)
                continue
            out.pop(name, None)
            if name in built:
                out[name] = built[name]
    return out
