"""OpenAI Chat Completions request bodies to and from the canonical request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from smartflow.core.errors import InvalidRequest
from smartflow.core.types import (
    ChatRequest,
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    ResponseFormat,
    Role,
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
    "PARSED_FIELDS",
    "PATCH_FIELDS",
    "build_request",
    "parse_request",
    "patch_body",
    "split_data_url",
]

# Dialect roles to canonical ones; "developer" is the newer name for "system".
_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


def split_data_url(url: str) -> tuple[str, str] | None:
    """Return (media type, base64 data) of a ``data:`` URL, or None for other URLs."""
    if not url.startswith("data:"):
        return None
    header, _, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if encoding != "base64" or not data:
        return None
    return media_type or "application/octet-stream", data


def _parse_parts(content: Any, path: str) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)]
    parts: list[Part] = []
    for i, raw in enumerate(expect_list(content, path)):
        item_path = f"{path}[{i}]"
        item = expect_dict(raw, item_path)
        kind = item.get("type")
        if kind == "text":
            parts.append(TextPart(expect_str(item.get("text"), f"{item_path}.text")))
        elif kind == "image_url":
            image = expect_dict(item.get("image_url"), f"{item_path}.image_url")
            url = expect_str(image.get("url"), f"{item_path}.image_url.url")
            detail = image.get("detail")
            inline = split_data_url(url)
            if inline is not None:
                parts.append(ImagePart(data=inline[1], media_type=inline[0], detail=detail))
            elif url.startswith("data:"):
                raise InvalidRequest(
                    f"Invalid image at '{item_path}.image_url.url': a data URL must have the "
                    "form data:<media type>;base64,<data>.",
                    param=f"{item_path}.image_url.url",
                )
            else:
                parts.append(ImagePart(url=url, detail=detail))
        elif kind == "refusal":
            parts.append(TextPart(expect_str(item.get("refusal"), f"{item_path}.refusal")))
        else:
            raise InvalidRequest(
                f"Unsupported content part type {excerpt(kind)} at '{item_path}.type': "
                "use 'text' or 'image_url'.",
                param=f"{item_path}.type",
            )
    return parts


def _parse_tool_calls(value: Any, path: str) -> list[ToolCall]:
    calls = []
    for i, raw in enumerate(expect_list(value, path)):
        item = expect_dict(raw, f"{path}[{i}]")
        function = expect_dict(item.get("function"), f"{path}[{i}].function")
        calls.append(
            ToolCall(
                id=expect_str(item.get("id"), f"{path}[{i}].id"),
                name=expect_str(function.get("name"), f"{path}[{i}].function.name"),
                arguments=expect_str(
                    function.get("arguments", "{}"), f"{path}[{i}].function.arguments"
                ),
            )
        )
    return calls


def _parse_message(raw: Any, path: str) -> Message:
    item = expect_dict(raw, path)
    role = item.get("role")
    if role not in _ROLES:
        if role is None:
            raise InvalidRequest(
                f"Missing required parameter: '{path}.role'.", param=f"{path}.role"
            )
        raise InvalidRequest(
            f"Invalid value for '{path}.role': {excerpt(role)}. "
            "Use one of: system, developer, user, "
            "assistant, tool.",
            param=f"{path}.role",
        )
    if role != "assistant" and "content" not in item:
        raise InvalidRequest(
            f"Missing required parameter: '{path}.content'.", param=f"{path}.content"
        )
    canonical_role = _ROLES[role]
    message = Message(canonical_role, content=_parse_parts(item.get("content"), f"{path}.content"))
    if canonical_role == "assistant":
        if item.get("tool_calls"):
            message.tool_calls = _parse_tool_calls(item["tool_calls"], f"{path}.tool_calls")
        reasoning = item.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            message.content.insert(0, ReasoningPart(reasoning))
    if canonical_role == "tool":
        message.tool_call_id = expect_str(item.get("tool_call_id"), f"{path}.tool_call_id")
    if item.get("name") is not None:
        message.name = expect_str(item["name"], f"{path}.name")
    return message


def _parse_tools(value: Any) -> list[Tool]:
    tools = []
    for i, raw in enumerate(expect_list(value, "tools")):
        item = expect_dict(raw, f"tools[{i}]")
        kind = item.get("type", "function")
        if kind != "function":
            raw_name = item.get("name")
            name = raw_name if isinstance(raw_name, str) else str(kind)
            tools.append(Tool(name=name, builtin=item, builtin_dialect="openai"))
            continue
        function = expect_dict(item.get("function"), f"tools[{i}].function")
        parameters = function.get("parameters")
        tools.append(
            Tool(
                name=expect_str(function.get("name"), f"tools[{i}].function.name"),
                description=function.get("description"),
                parameters=expect_dict(parameters, f"tools[{i}].function.parameters")
                if parameters is not None
                else {"type": "object", "properties": {}},
                strict=function.get("strict"),
            )
        )
    return tools


def _parse_tool_choice(value: Any) -> ToolChoice:
    if isinstance(value, str):
        if value not in ("auto", "none", "required"):
            raise InvalidRequest(
                f"Invalid value for 'tool_choice': {excerpt(value)}. "
                "Use 'auto', 'none', 'required' or "
                "an object naming a function.",
                param="tool_choice",
            )
        return ToolChoice(value)  # type: ignore[arg-type]
    choice = expect_dict(value, "tool_choice")
    function = expect_dict(choice.get("function"), "tool_choice.function")
    return ToolChoice("tool", name=expect_str(function.get("name"), "tool_choice.function.name"))


def _parse_response_format(value: Any) -> ResponseFormat:
    fmt = expect_dict(value, "response_format")
    kind = fmt.get("type")
    if kind == "json_schema":
        spec = expect_dict(fmt.get("json_schema"), "response_format.json_schema")
        return ResponseFormat(
            "json_schema",
            schema=expect_dict(spec.get("schema", {}), "response_format.json_schema.schema"),
            name=spec.get("name"),
            strict=spec.get("strict"),
        )
    if kind in ("json_object", "text"):
        return ResponseFormat(kind)
    raise InvalidRequest(
        f"Invalid value for 'response_format.type': {excerpt(kind)}. Use 'text', 'json_object' or "
        "'json_schema'.",
        param="response_format.type",
    )


def _parse_sampling(body: dict[str, Any]) -> Sampling:
    s = Sampling()
    get = body.get
    if get("temperature") is not None:
        s.temperature = expect_number(body["temperature"], "temperature")
    if get("top_p") is not None:
        s.top_p = expect_number(body["top_p"], "top_p")
    if get("max_completion_tokens") is not None:
        s.max_tokens = expect_int(body["max_completion_tokens"], "max_completion_tokens", minimum=1)
    elif get("max_tokens") is not None:
        s.max_tokens = expect_int(body["max_tokens"], "max_tokens", minimum=1)
    stop = get("stop")
    if stop is not None:
        if isinstance(stop, str):
            s.stop = [stop]
        else:
            s.stop = [expect_str(v, f"stop[{i}]") for i, v in enumerate(expect_list(stop, "stop"))]
    if get("frequency_penalty") is not None:
        s.frequency_penalty = expect_number(body["frequency_penalty"], "frequency_penalty")
    if get("presence_penalty") is not None:
        s.presence_penalty = expect_number(body["presence_penalty"], "presence_penalty")
    if get("seed") is not None:
        s.seed = expect_int(body["seed"], "seed")
    if get("n") is not None:
        s.n = expect_int(body["n"], "n", minimum=1)
    if get("logprobs") is not None:
        s.logprobs = expect_bool(body["logprobs"], "logprobs")
    if get("top_logprobs") is not None:
        s.top_logprobs = expect_int(body["top_logprobs"], "top_logprobs", minimum=0)
    if get("reasoning_effort") is not None:
        s.reasoning_effort = expect_str(body["reasoning_effort"], "reasoning_effort")
    if get("parallel_tool_calls") is not None:
        s.parallel_tool_calls = expect_bool(body["parallel_tool_calls"], "parallel_tool_calls")
    return s


# The top-level body fields parse_request reads. Any other field reaches an upstream of
# the same dialect untouched, and is dropped when the request is translated.
PARSED_FIELDS = frozenset(
    {
        "frequency_penalty",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "messages",
        "metadata",
        "model",
        "n",
        "parallel_tool_calls",
        "presence_penalty",
        "reasoning_effort",
        "response_format",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
    }
)


def parse_request(body: dict[str, Any]) -> ChatRequest:
    """Validate an OpenAI request body and convert it; errors name the offending field."""
    model = body.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    expect_str(model, "model")
    raw_messages = body.get("messages")
    if raw_messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    expect_list(raw_messages, "messages")
    if not raw_messages:
        raise InvalidRequest(
            "Invalid value for 'messages': the array is empty. Send at least one message.",
            param="messages",
        )
    messages = [_parse_message(m, f"messages[{i}]") for i, m in enumerate(raw_messages)]
    request = ChatRequest(model=model, messages=messages, sampling=_parse_sampling(body))
    if body.get("tools") is not None:
        request.tools = _parse_tools(body["tools"])
    if body.get("tool_choice") is not None:
        request.tool_choice = _parse_tool_choice(body["tool_choice"])
    if body.get("response_format") is not None:
        request.response_format = _parse_response_format(body["response_format"])
    if body.get("stream") is not None:
        request.stream = expect_bool(body["stream"], "stream")
    options = body.get("stream_options")
    if options is not None:
        options = expect_dict(options, "stream_options")
        if options.get("include_usage") is not None:
            request.include_usage = expect_bool(
                options["include_usage"], "stream_options.include_usage"
            )
    if body.get("user") is not None:
        request.user = expect_str(body["user"], "user")
    if body.get("metadata") is not None:
        request.metadata = expect_dict(body["metadata"], "metadata")
    return request


# --- canonical to OpenAI (the provider side) ----------------------------------------


def _render_part(part: Part) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        url = part.url if part.url is not None else f"data:{part.media_type};base64,{part.data}"
        image: dict[str, Any] = {"url": url}
        if part.detail:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    return None  # reasoning is not sent back to OpenAI


def _render_content(parts: Sequence[Part]) -> str | list[dict[str, Any]]:
    if all(isinstance(p, TextPart) for p in parts):
        return "".join(p.text for p in parts)  # type: ignore[union-attr]
    rendered = [r for r in (_render_part(p) for p in parts) if r is not None]
    return rendered


def _render_message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id,
            "content": _render_content(message.content),
        }
    if message.role == "assistant":
        out: dict[str, Any] = {"role": "assistant"}
        visible = [p for p in message.content if not isinstance(p, ReasoningPart)]
        out["content"] = _render_content(visible) if visible else None
        if message.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in message.tool_calls
            ]
        return out
    return {"role": message.role, "content": _render_content(message.content)}


def build_request(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """Render a canonical request as an OpenAI Chat Completions body for ``upstream_model``."""
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": [_render_message(m) for m in request.messages],
    }
    s = request.sampling
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed", "n"):
        value = getattr(s, name)
        if value is not None:
            body[name] = value
    if s.max_tokens is not None:
        body["max_completion_tokens"] = s.max_tokens
    if s.stop:
        body["stop"] = s.stop
    if s.logprobs is not None:
        body["logprobs"] = s.logprobs
    if s.top_logprobs is not None:
        body["top_logprobs"] = s.top_logprobs
    if s.reasoning_effort is not None:
        body["reasoning_effort"] = s.reasoning_effort
    if request.tools:
        body["tools"] = [_render_tool(t, i) for i, t in enumerate(request.tools)]
        if s.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = s.parallel_tool_calls
    if request.tool_choice is not None:
        choice = request.tool_choice
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}}
            if choice.mode == "tool"
            else choice.mode
        )
    fmt = request.response_format
    if fmt is not None:
        if fmt.type == "json_schema":
            spec: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema or {}}
            if fmt.strict is not None:
                spec["strict"] = fmt.strict
            body["response_format"] = {"type": "json_schema", "json_schema": spec}
        else:
            body["response_format"] = {"type": fmt.type}
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if request.user is not None:
        body["user"] = request.user
    return body


def _render_tool(tool: Tool, index: int) -> dict[str, Any]:
    if tool.builtin is not None:
        if tool.builtin_dialect != "openai":
            raise InvalidRequest(
                f"Tool 'tools[{index}]' is a built-in tool of the {tool.builtin_dialect} "
                "API, which an OpenAI model cannot run. Remove it or route to that provider.",
                param=f"tools[{index}]",
            )
        return tool.builtin
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


# The body fields that carry each canonical parameter.
PATCH_FIELDS: dict[str, tuple[str, ...]] = {
    "temperature": ("temperature",),
    "top_p": ("top_p",),
    "max_tokens": ("max_completion_tokens", "max_tokens"),
    "stop": ("stop",),
    "frequency_penalty": ("frequency_penalty",),
    "presence_penalty": ("presence_penalty",),
    "seed": ("seed",),
    "n": ("n",),
    "logprobs": ("logprobs",),
    "top_logprobs": ("top_logprobs",),
    "reasoning_effort": ("reasoning_effort",),
    "parallel_tool_calls": ("parallel_tool_calls",),
    "tool_choice": ("tool_choice",),
    "response_format": ("response_format",),
    "user": ("user",),
}


def patch_body(
    body: dict[str, Any], request: ChatRequest, params: set[str], model: str
) -> dict[str, Any]:
    """Rewrite only the fields of ``params`` in a pass-through body, from ``request``.

    Everything else, unknown fields included, stays as the caller sent it.
    """
    built = build_request(request, model)
    out = dict(body)
    for param in params:
        for name in PATCH_FIELDS.get(param, ()):
            out.pop(name, None)
            if name in built:
                out[name] = built[name]
    return out
