"""Canonical requests to Cohere Chat v2 (``POST /v2/chat``) bodies."""

from __future__ import annotations

from typing import Any

import orjson

from smartflow.core.errors import InvalidRequest
from smartflow.core.types import (
    ChatRequest,
    ImagePart,
    Message,
    ReasoningPart,
    TextPart,
    Tool,
    ToolCall,
)

__all__ = ["build_request"]

# Cohere documents p (top-p) as 0.01 to 0.99. OpenAI clients often send 1.0, which
# means no nucleus cut-off, so it is sent as the upper bound.
_P_RANGE = (0.01, 0.99)


# --- messages --------------------------------------------------------------------------


def _image_url(part: ImagePart) -> str:
    if part.data is not None:
        return f"data:{part.media_type or 'image/png'};base64,{part.data}"
    return part.url or ""


def _user_content(message: Message) -> str | list[dict[str, Any]]:
    if all(isinstance(p, TextPart) for p in message.content):
        return message.text()
    blocks: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            image: dict[str, Any] = {"url": _image_url(part)}
            if part.detail:
                image["detail"] = part.detail
            blocks.append({"type": "image_url", "image_url": image})
    return blocks


def _call_arguments(call: ToolCall, path: str) -> str:
    text = call.arguments or "{}"
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"Invalid JSON in '{path}': tool call arguments must be a JSON object.", param=path
        ) from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid value for '{path}': expected a JSON object.", param=path)
    return text


def _assistant(message: Message, path: str) -> dict[str, Any] | None:
    rendered: dict[str, Any] = {"role": "assistant"}
    text = message.text()
    if text:
        rendered["content"] = text
    if message.tool_calls:
        rendered["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": _call_arguments(
                        call, f"{path}.tool_calls[{number}].function.arguments"
                    ),
                },
            }
            for number, call in enumerate(message.tool_calls)
        ]
        # Cohere's tool plan reaches callers as reasoning, so reasoning in a turn with
        # tool calls goes back as that turn's plan.
        plan = "".join(p.text for p in message.content if isinstance(p, ReasoningPart))
        if plan:
            rendered["tool_plan"] = plan
    if "content" not in rendered and "tool_calls" not in rendered:
        return None  # Cohere rejects an assistant turn with neither
    return rendered


def _tool_result(message: Message, path: str) -> dict[str, Any]:
    if any(isinstance(p, ImagePart) for p in message.content):
        raise InvalidRequest(
            f"The tool result at '{path}' contains an image; Cohere tool results take text only.",
            param=f"{path}.content",
        )
    return {
        "role": "tool",
        "tool_call_id": message.tool_call_id or "",
        "content": message.text(),
    }


def _render_messages(request: ChatRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for number, message in enumerate(request.messages):
        path = f"messages[{number}]"
        if message.role == "system":
            messages.append({"role": "system", "content": message.text()})
        elif message.role == "user":
            messages.append({"role": "user", "content": _user_content(message)})
        elif message.role == "assistant":
            rendered = _assistant(message, path)
            if rendered is not None:
                messages.append(rendered)
        else:
            messages.append(_tool_result(message, path))
    return messages


# --- tools and options -----------------------------------------------------------------


def _render_tool(tool: Tool, index: int) -> dict[str, Any]:
    if tool.builtin is not None:
        raise InvalidRequest(
            f"Tool 'tools[{index}]' is a built-in tool of the {tool.builtin_dialect} API, "
            "which a Cohere model cannot run. Remove it or route to that provider.",
            param=f"tools[{index}]",
        )
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool.parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _apply_tools(request: ChatRequest, body: dict[str, Any]) -> None:
    # NOTE: Cohere has no switch for parallel tool calls, so parallel_tool_calls is
    # not sent.
    if not request.tools:
        return
    tools = [_render_tool(tool, index) for index, tool in enumerate(request.tools)]
    choice = request.tool_choice
    if choice is not None and choice.mode == "tool":
        # Cohere cannot force one named tool, but offering only that tool with
        # REQUIRED has the same effect.
        tools = [t for t in tools if t["function"]["name"] == choice.name]
        if not tools:
            raise InvalidRequest(
                f"tool_choice names the tool {choice.name!r}, which is not in 'tools'.",
                param="tool_choice",
            )
    body["tools"] = tools
    if any(tool.strict for tool in request.tools):
        body["strict_tools"] = True
    if choice is None or choice.mode == "auto":
        return
    body["tool_choice"] = "NONE" if choice.mode == "none" else "REQUIRED"


def _apply_sampling(request: ChatRequest, body: dict[str, Any]) -> None:
    s = request.sampling
    if s.n is not None and s.n > 1:
        raise InvalidRequest(
            f"Cohere returns one choice per request, so 'n' must be 1 (got {s.n}).", param="n"
        )
    optional = (
        ("temperature", s.temperature),
        ("k", s.top_k),
        ("max_tokens", s.max_tokens),
        ("seed", s.seed),
        ("frequency_penalty", s.frequency_penalty),
        ("presence_penalty", s.presence_penalty),
    )
    for name, value in optional:
        if value is not None:
            body[name] = value
    if s.top_p is not None:
        body["p"] = min(max(s.top_p, _P_RANGE[0]), _P_RANGE[1])
    if s.stop:
        body["stop_sequences"] = s.stop
    if s.logprobs is not None:
        # NOTE: Chat v2 takes logprobs as a boolean with no count of alternatives, so
        # top_logprobs has no Cohere field. The canonical response has no logprobs, so
        # the logprobs that Cohere returns do not reach the client yet.
        body["logprobs"] = s.logprobs
    if s.thinking_budget is not None:
        if s.thinking_budget > 0:
            body["thinking"] = {"type": "enabled", "token_budget": s.thinking_budget}
        else:
            body["thinking"] = {"type": "disabled"}
    elif s.reasoning_effort is not None:
        # Cohere's thinking has no effort levels: only on or off.
        enabled = s.reasoning_effort not in ("none", "minimal")
        body["thinking"] = {"type": "enabled" if enabled else "disabled"}


def build_request(request: ChatRequest, model: str) -> dict[str, Any]:
    """Render a canonical request as a Cohere Chat v2 body for ``model``."""
    body: dict[str, Any] = {"model": model, "messages": _render_messages(request)}
    if request.stream:
        body["stream"] = True
    _apply_tools(request, body)
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        rendered: dict[str, Any] = {"type": "json_object"}
        if fmt.type == "json_schema" and fmt.schema:
            rendered["json_schema"] = fmt.schema
        body["response_format"] = rendered
    _apply_sampling(request, body)
    return body
