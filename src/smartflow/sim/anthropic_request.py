"""Validation of Anthropic Messages requests, with the real API's error messages.

Messages follow the API's ``field.path: problem`` style (``max_tokens: Field required``).
Consecutive turns of one role are accepted, because the API merges them. The first
message must come from the user.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field
from typing import Any

from smartflow.sim.anthropic_models import AnthropicModel
from smartflow.sim.script import SimInput, count_tokens

__all__ = ["AnthropicError", "MessagesRequest", "check_schema", "parse_messages_request"]

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_USER_BLOCKS = ("text", "image", "document", "tool_result", "search_result")
_ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking", "server_tool_use")
_EFFORT_THINKING_TOKENS = {"low": 16, "medium": 48, "high": 96, "xhigh": 160, "max": 256}


class AnthropicError(Exception):
    """A request the API rejects: HTTP status, ``error.type`` and message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(status, error_type, message)
        self.status = status
        self.error_type = error_type
        self.message = message


def _invalid(message: str) -> AnthropicError:
    return AnthropicError(400, "invalid_request_error", message)


@dataclass(slots=True)
class MessagesRequest:
    """A validated Messages request: the neutral input plus what shapes the rendering."""

    model: AnthropicModel
    sim_input: SimInput
    max_tokens: int
    stream: bool
    thinking: str | None
    """``enabled`` or ``adaptive`` when the reply starts with a thinking block."""
    thinking_display: str
    thinking_text: str = ""
    thinking_tokens: int = 0
    single_tool_call: bool = False
    input_tokens: int = 0
    tool_names: list[str] = field(default_factory=list)


# --- generic field checks ---------------------------------------------------------------


def _number(body: dict[str, Any], name: str, low: float, high: float | None) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{name}: Input should be a valid number")
    if value < low:
        raise _invalid(f"{name}: Input should be greater than or equal to {low:g}")
    if high is not None and value > high:
        raise _invalid(f"{name}: Input should be less than or equal to {high:g}")
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{name}: Input should be a valid integer")
    if value < low:
        raise _invalid(f"{name}: Input should be greater than or equal to {low}")
    return value


def _field(container: dict[str, Any], key: str, path: str, kind: type, kind_name: str) -> Any:
    value = container.get(key)
    if value is None:
        raise _invalid(f"{path}: Field required")
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _invalid(f"{path}: Input should be a valid {kind_name}")
    return value


def check_schema(body: dict[str, Any], *, count_only: bool) -> None:
    """Check required fields, types and ranges that do not depend on the model."""
    _field(body, "model", "model", str, "string")
    _field(body, "messages", "messages", list, "list")
    if not count_only:
        _field(body, "max_tokens", "max_tokens", int, "integer")
        _integer(body, "max_tokens", 1)
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    _integer(body, "top_k", 1)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream: Input should be a valid boolean")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise _invalid("stop_sequences: Input should be a valid list of strings")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _invalid("metadata: Input should be a valid dictionary")


# --- content blocks ---------------------------------------------------------------------


def _check_image(block: dict[str, Any], path: str) -> None:
    source = _field(block, "source", f"{path}.source", dict, "dictionary")
    kind = source.get("type")
    if kind == "base64":
        media_type = source.get("media_type")
        if media_type not in _IMAGE_TYPES:
            raise _invalid(
                f"{path}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
                "'image/gif' or 'image/webp'"
            )
        data = _field(source, "data", f"{path}.source.base64.data", str, "string")
        try:
            binascii.a2b_base64(data, strict_mode=True)
        except binascii.Error as exc:
            raise _invalid(
                f"{path}.source.base64.data: The image data is not valid base64."
            ) from exc
    elif kind == "url":
        url = _field(source, "url", f"{path}.source.url.url", str, "string")
        if not url.startswith(("http://", "https://")):
            raise _invalid(f"{path}.source.url.url: Input should be a valid URL")
    elif kind != "file":
        raise _invalid(
            f"{path}.source: Input tag '{kind}' found using 'type' does not match any of the "
            "expected tags: 'base64', 'url', 'file'"
        )


def _tool_result_text(block: dict[str, Any], path: str, sim: SimInput) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid(f"{path}.content: Input should be a valid string or list")
    texts = []
    for number, inner in enumerate(content):
        inner_path = f"{path}.content.{number}"
        if not isinstance(inner, dict):
            raise _invalid(f"{inner_path}: Input should be a valid dictionary")
        if inner.get("type") == "text":
            texts.append(_field(inner, "text", f"{inner_path}.text", str, "string"))
        elif inner.get("type") == "image":
            _check_image(inner, inner_path)
            sim.image_count += 1
    return "\n".join(texts)


@dataclass(slots=True)
class _Turn:
    """What one message contributed: text, tool_use ids it opened, tool results it sent."""

    text: list[str] = field(default_factory=list)
    tool_use_ids: list[str] = field(default_factory=list)
    tool_results: list[tuple[int, str, str]] = field(default_factory=list)
    """(block index, tool_use_id, result text)."""


def _parse_block(block: Any, path: str, role: str, sim: SimInput, turn: _Turn, number: int) -> None:
    if not isinstance(block, dict):
        raise _invalid(f"{path}: Input should be a valid dictionary")
    kind = block.get("type")
    allowed = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
    if kind not in allowed:
        listed = ", ".join(f"'{name}'" for name in allowed)
        raise _invalid(f"{path}.type: Input should be one of {listed} in a {role} message")
    if kind == "text":
        text = _field(block, "text", f"{path}.text", str, "string")
        turn.text.append(text)
        sim.texts.append(text)
    elif kind == "image":
        _check_image(block, path)
        sim.image_count += 1
    elif kind == "tool_use":
        tool_id = _field(block, "id", f"{path}.id", str, "string")
        _field(block, "name", f"{path}.name", str, "string")
        tool_input = _field(block, "input", f"{path}.input", dict, "dictionary")
        turn.tool_use_ids.append(tool_id)
        sim.texts.append(str(tool_input))
    elif kind == "tool_result":
        tool_use_id = _field(block, "tool_use_id", f"{path}.tool_use_id", str, "string")
        result = _tool_result_text(block, path, sim)
        turn.tool_results.append((number, tool_use_id, result))
        sim.texts.append(result)
    elif kind == "thinking":
        sim.texts.append(str(block.get("thinking", "")))


def _parse_turn(message: Any, index: int, sim: SimInput, is_last: bool) -> tuple[str, _Turn]:
    path = f"messages.{index}"
    if not isinstance(message, dict):
        raise _invalid(f"{path}: Input should be a valid dictionary")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise _invalid(f"{path}.role: Input should be 'user' or 'assistant'")
    content = message.get("content")
    turn = _Turn()
    if content is None:
        raise _invalid(f"{path}.content: Field required")
    empty = content == "" or content == []
    if empty and not (is_last and role == "assistant"):
        raise _invalid(
            f"{path}: all messages must have non-empty content except for the optional "
            "final assistant message"
        )
    if isinstance(content, str):
        turn.text.append(content)
        sim.texts.append(content)
    elif isinstance(content, list):
        for number, block in enumerate(content):
            _parse_block(block, f"{path}.content.{number}", role, sim, turn, number)
    else:
        raise _invalid(f"{path}.content: Input should be a valid string or list")
    return role, turn


def _parse_messages(messages: list[Any], sim: SimInput) -> str:
    """Validate the conversation, fill ``sim`` and return the last message's role."""
    if not messages:
        raise _invalid("messages: at least one message is required")
    open_ids: list[str] = []
    last_role = "user"
    for index, message in enumerate(messages):
        role, turn = _parse_turn(message, index, sim, index == len(messages) - 1)
        if index == 0 and role != "user":
            raise _invalid('messages: first message must use the "user" role')
        answered = {tool_use_id for _, tool_use_id, _ in turn.tool_results}
        missing = [tool_id for tool_id in open_ids if tool_id not in answered]
        if missing:
            raise _invalid(
                f"messages.{index}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )
        for number, tool_use_id, _ in turn.tool_results:
            if tool_use_id not in open_ids:
                raise _invalid(
                    f"messages.{index}.content.{number}: unexpected `tool_use_id` found in "
                    f"`tool_result` blocks: {tool_use_id}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message."
                )
        if role == "user":
            sim.last_user_text = "\n".join(turn.text)
            sim.tool_results = [result for _, _, result in turn.tool_results]
        open_ids = turn.tool_use_ids
        last_role = role
    if open_ids:
        raise _invalid(
            f"messages.{len(messages)}: `tool_use` ids were found without `tool_result` blocks "
            f"immediately after: {', '.join(open_ids)}. Each `tool_use` block must have a "
            "corresponding `tool_result` block in the next message."
        )
    return last_role


# --- system, tools, output format -------------------------------------------------------


def _parse_system(system: Any, sim: SimInput) -> None:
    if system is None:
        return
    if isinstance(system, str):
        sim.texts.append(system)
        return
    if not isinstance(system, list):
        raise _invalid("system: Input should be a valid string or list")
    for number, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _invalid(f"system.{number}.type: Input should be 'text'")
        sim.texts.append(_field(block, "text", f"system.{number}.text", str, "string"))


def _parse_tools(body: dict[str, Any], sim: SimInput) -> tuple[list[str], bool]:
    """Read ``tools`` and ``tool_choice``.

    Returns the tool names and whether parallel tool use is disabled.
    """
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise _invalid("tools: Input should be a valid list")
    names: list[str] = []
    for number, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _invalid(f"tools.{number}: Input should be a valid dictionary")
        kind = tool.get("type") or "custom"
        path = f"tools.{number}.{kind}"
        name = _field(tool, "name", f"{path}.name", str, "string")
        if not _TOOL_NAME.match(name):
            raise _invalid(f"{path}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        if name in names:
            raise _invalid(f"tools: Tool names must be unique, found '{name}' more than once.")
        names.append(name)
        if kind == "custom":
            schema = _field(tool, "input_schema", f"{path}.input_schema", dict, "dictionary")
            sim.tools.append((name, schema))
            sim.texts.append(f"{name} {tool.get('description', '')}")
    choice = body.get("tool_choice")
    if choice is None:
        return names, False
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _invalid(
            "tool_choice: Input tag found using 'type' does not match any of the expected tags: "
            "'auto', 'any', 'tool', 'none'"
        )
    kind = choice["type"]
    if kind == "tool":
        name = _field(choice, "name", "tool_choice.tool.name", str, "string")
        if name not in names:
            raise _invalid(f"tool_choice.tool.name: Tool '{name}' not found in tools")
        sim.tool_choice = name
    else:
        sim.tool_choice = {"auto": "auto", "any": "required", "none": "none"}[kind]
    return names, bool(choice.get("disable_parallel_tool_use"))


def _parse_output_format(body: dict[str, Any], sim: SimInput) -> str | None:
    """Read ``output_config`` (and the older ``output_format``) and return the effort."""
    config = body.get("output_config") or {}
    if not isinstance(config, dict):
        raise _invalid("output_config: Input should be a valid dictionary")
    effort = config.get("effort")
    if effort is not None and effort not in _EFFORT_THINKING_TOKENS:
        raise _invalid(
            "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
        )
    output_format = config.get("format") or body.get("output_format")
    if output_format is not None:
        path = "output_config.format" if config.get("format") else "output_format"
        if not isinstance(output_format, dict) or output_format.get("type") != "json_schema":
            raise _invalid(f"{path}.type: Input should be 'json_schema'")
        sim.json_schema = _field(output_format, "schema", f"{path}.schema", dict, "dictionary")
    return effort


# --- model rules ------------------------------------------------------------------------


def _check_sampling_rules(body: dict[str, Any], model: AnthropicModel) -> None:
    if model.sampling == "temperature_or_top_p":
        if body.get("temperature") is not None and body.get("top_p") is not None:
            raise _invalid(
                "`temperature` and `top_p` cannot both be specified for this model. "
                "Please use only one."
            )
    elif model.sampling == "defaults_only":
        temperature = body.get("temperature")
        if temperature is not None and temperature != 1:
            raise _invalid("`temperature` is deprecated for this model; omit it.")
        for name in ("top_p", "top_k"):
            if body.get(name) is not None:
                raise _invalid(f"`{name}` is deprecated for this model; omit it.")


def _parse_thinking(
    body: dict[str, Any], model: AnthropicModel, max_tokens: int | None
) -> tuple[str | None, str, int]:
    """Validate ``thinking`` and return its mode, display and token budget."""
    thinking = body.get("thinking")
    if thinking is None:
        return None, "summarized", 0
    if not isinstance(thinking, dict) or thinking.get("type") not in (
        "enabled",
        "adaptive",
        "disabled",
    ):
        raise _invalid(
            "thinking: Input tag found using 'type' does not match any of the expected tags: "
            "'enabled', 'adaptive', 'disabled'"
        )
    mode = thinking["type"]
    if mode == "disabled":
        return None, "summarized", 0
    if mode not in model.thinking_modes:
        if mode == "enabled":
            raise _invalid(
                "thinking.type.enabled is not supported for this model. Use thinking.type.adaptive "
                "and output_config.effort to control thinking."
            )
        raise _invalid("thinking.type.adaptive is not supported for this model.")
    display = thinking.get("display") or model.thinking_display
    if display not in ("summarized", "omitted"):
        raise _invalid(f"thinking.{mode}.display: Input should be 'summarized' or 'omitted'")
    budget = 0
    if mode == "enabled":
        budget = _field(thinking, "budget_tokens", "thinking.enabled.budget_tokens", int, "integer")
        if budget < 1024:
            raise _invalid(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            )
        if max_tokens is not None and budget >= max_tokens:
            raise _invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
    _check_thinking_sampling(body)
    return mode, display, budget


def _check_thinking_sampling(body: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise _invalid("`temperature` may only be set to 1 when thinking is enabled.")
    if body.get("top_k") is not None:
        raise _invalid("`top_k` is not supported when thinking is enabled.")
    top_p = body.get("top_p")
    if top_p is not None and top_p < 0.95:
        raise _invalid("`top_p` must be between 0.95 and 1 when thinking is enabled.")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise _invalid("Thinking may not be enabled when tool_choice forces tool use.")


# --- entry point ------------------------------------------------------------------------


def parse_messages_request(
    body: dict[str, Any], model: AnthropicModel, *, count_only: bool = False
) -> MessagesRequest:
    """Validate a Messages (or count_tokens) request for ``model``.

    ``check_schema`` must have passed. Raises ``AnthropicError`` for the first problem.
    """
    max_tokens: int | None = body.get("max_tokens")
    if max_tokens is not None and max_tokens > model.max_output_tokens:
        raise _invalid(
            f"max_tokens: {max_tokens} > {model.max_output_tokens}, which is the maximum allowed "
            f"number of output tokens for {model.response_name}"
        )
    _check_sampling_rules(body, model)
    mode, display, budget = _parse_thinking(body, model, max_tokens)
    sim = SimInput(model=model.response_name)
    _parse_system(body.get("system"), sim)
    last_role = _parse_messages(body["messages"], sim)
    if last_role == "assistant" and not model.prefill:
        raise _invalid(
            "This model does not support assistant message prefill. The conversation must end "
            "with a user message."
        )
    names, single = _parse_tools(body, sim)
    effort = _parse_output_format(body, sim)
    sim.stop = list(body.get("stop_sequences") or [])
    request = MessagesRequest(
        model=model,
        sim_input=sim,
        max_tokens=max_tokens or 0,
        stream=bool(body.get("stream")),
        thinking=mode,
        thinking_display=display,
        single_tool_call=single,
        tool_names=names,
    )
    request.input_tokens = max(
        sum(count_tokens(text) for text in sim.texts) + 3 * sim.image_count, 1
    )
    if mode is not None and not count_only:
        _plan_thinking(request, budget, effort)
    sim.max_tokens = request.max_tokens - request.thinking_tokens if max_tokens else None
    return request


def _plan_thinking(request: MessagesRequest, budget: int, effort: str | None) -> None:
    """Write the thinking text and its token count, within the budget and ``max_tokens``."""
    sim = request.sim_input
    text = (
        f"The user wrote: {sim.last_user_text[:200]}. "
        "I will answer in one short paragraph and use a tool only if one is needed."
    )
    limit = _EFFORT_THINKING_TOKENS[effort or "high"]
    tokens = min(count_tokens(text), limit, budget or limit, max(request.max_tokens - 1, 0))
    request.thinking_text = text if request.thinking_display == "summarized" else ""
    request.thinking_tokens = tokens
