"""Validation of OpenAI Chat Completions requests, with the real API's error bodies.

Checks run in the order: sampling fields, model restrictions (reasoning models), messages,
tools, response format, stop. The first problem found is returned with the body that
api.openai.com sends for it, so the gateway meets the same errors here as upstream.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import Any

from smartflow.sim.openai_fields import (
    ApiError,
    boolean_field,
    check_range,
    integer_field,
    invalid_type,
    invalid_value,
    missing,
    number_field,
    object_field,
    openai_error,
    require,
    supported_values,
)
from smartflow.sim.openai_models import OpenAIModel
from smartflow.sim.script import SimInput

__all__ = ["KNOWN_CHAT_FIELDS", "ChatRequest", "parse_chat_request"]

KNOWN_CHAT_FIELDS = frozenset(
    {
        "model", "messages", "audio", "frequency_penalty", "function_call", "functions",
        "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata",
        "modalities", "n", "parallel_tool_calls", "prediction", "presence_penalty",
        "prompt_cache_key", "prompt_cache_retention", "reasoning_effort", "response_format",
        "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
        "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p",
        "user", "verbosity", "web_search_options",
    }
)  # fmt: skip

_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_USER_PARTS = ("text", "image_url", "input_audio", "refusal", "audio", "file")
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")
_DATA_URL = re.compile(r"^data:([^;,]*);base64,")
_REASONING_TOKENS = {"none": 0, "minimal": 0, "low": 16, "medium": 64, "high": 192, "xhigh": 384}
"""Reasoning tokens a simulated reasoning model spends at each effort."""


@dataclass(slots=True)
class ChatRequest:
    """A validated chat request: the neutral input plus what shapes the rendering."""

    model: OpenAIModel
    sim_input: SimInput
    stream: bool
    include_usage: bool
    include_obfuscation: bool
    n: int
    logprobs: bool
    top_logprobs: int
    parallel_tool_calls: bool
    forced_function: bool
    reasoning_tokens: int
    unknown_fields: list[str]


# --- messages ---------------------------------------------------------------------------


def _content_text(content: Any, path: str, role: str, model: OpenAIModel, sim: SimInput) -> str:
    """Validate a message's content and return its text; count images into ``sim``."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_type(path, "one of a string or array of objects", content)
    texts: list[str] = []
    for number, part in enumerate(content):
        part_path = f"{path}[{number}]"
        if not isinstance(part, dict):
            raise invalid_type(part_path, "an object", part)
        kind = part.get("type")
        if kind is None:
            raise missing(f"{part_path}.type")
        if kind not in _USER_PARTS:
            raise invalid_value(f"{part_path}.type", kind, _USER_PARTS)
        if kind == "text":
            texts.append(require(part, "text", f"{part_path}.text", str, "a string"))
        elif kind == "image_url":
            if role != "user":
                message = (
                    "Invalid 'content': 'image_url' parts are only allowed in 'user' messages, "
                    f"not '{role}'."
                )
                raise openai_error(400, message, param=f"{part_path}.type")
            _check_image(part, part_path, model)
            sim.image_count += 1
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
    return "\n".join(texts)


def _check_image(part: dict[str, Any], path: str, model: OpenAIModel) -> None:
    if not model.vision:
        message = "Invalid content type. image_url is only supported by certain models."
        raise openai_error(400, message, param=f"{path}.type")
    image = require(part, "image_url", f"{path}.image_url", dict, "an object")
    url = require(image, "url", f"{path}.image_url.url", str, "a string")
    detail = image.get("detail", "auto")
    if detail not in ("auto", "low", "high"):
        raise invalid_value(f"{path}.image_url.detail", detail, ("auto", "low", "high"))
    if url.startswith("data:"):
        _check_data_url(url, f"{path}.image_url.url")
    elif not url.startswith(("http://", "https://")):
        message = f"Invalid '{path}.image_url.url': expected a URL or a base64-encoded data URL."
        raise openai_error(400, message, param=f"{path}.image_url.url", code="invalid_value")


def _check_data_url(url: str, param: str) -> None:
    match = _DATA_URL.match(url)
    if match is None or match.group(1) not in _IMAGE_TYPES:
        mime = match.group(1) if match else "unknown"
        message = (
            f"Invalid '{param}'. Expected a base64-encoded data URL with an image MIME type "
            f"(e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got unsupported MIME "
            f"type '{mime}'."
        )
        raise openai_error(400, message, param=param, code="invalid_image_format")
    try:
        binascii.a2b_base64(url[match.end() :], strict_mode=True)
    except binascii.Error as exc:
        message = f"Invalid '{param}'. The image data is not valid base64."
        raise openai_error(400, message, param=param, code="invalid_image_url") from exc


def _tool_call_ids(message: dict[str, Any], path: str, sim: SimInput) -> list[str]:
    calls = message.get("tool_calls")
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise invalid_type(f"{path}.tool_calls", "an array", calls)
    ids: list[str] = []
    for number, call in enumerate(calls):
        call_path = f"{path}.tool_calls[{number}]"
        if not isinstance(call, dict):
            raise invalid_type(call_path, "an object", call)
        for key in ("id", "function"):
            if key not in call:
                raise missing(f"{call_path}.{key}")
        function = call["function"]
        if not isinstance(function, dict):
            raise invalid_type(f"{call_path}.function", "an object", function)
        arguments = require(
            function, "arguments", f"{call_path}.function.arguments", str, "a string"
        )
        sim.texts.append(str(function.get("name", "")) + " " + arguments)
        ids.append(str(call["id"]))
    return ids


def _unanswered(pending: list[str], index: int) -> ApiError:
    message = (
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        + ", ".join(pending)
    )
    return openai_error(400, message, param=f"messages.[{index}].role")


def _answered_call(message: dict[str, Any], index: int, answerable: set[str]) -> str:
    """Return the tool_call_id a tool message answers; reject ids the previous turn lacks."""
    call_id = message.get("tool_call_id")
    if call_id is None:
        raise missing(f"messages[{index}].tool_call_id")
    if call_id not in answerable:
        # "preceeding" is spelled as in the real API's message.
        text = (
            "Invalid parameter: messages with role 'tool' must be a response to a "
            "preceeding message with 'tool_calls'."
        )
        raise openai_error(400, text, param=f"messages.[{index}].role")
    return str(call_id)


def _parse_messages(messages: Any, model: OpenAIModel, sim: SimInput) -> None:
    if messages is None:
        raise missing("messages")
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array", messages)
    if not messages:
        message = (
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead."
        )
        raise openai_error(400, message, param="messages", code="empty_array")
    answerable: set[str] = set()
    pending: list[str] = []
    tool_results: list[str] = []
    for index, message in enumerate(messages):
        path = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid_type(path, "an object", message)
        role = message.get("role")
        if role is None:
            raise missing(f"{path}.role")
        if role not in _ROLES:
            raise invalid_value(f"{path}.role", role, _ROLES)
        if role == "tool":
            call_id = _answered_call(message, index, answerable)
            if call_id in pending:
                pending.remove(call_id)
            result = _content_text(message.get("content", ""), f"{path}.content", role, model, sim)
            sim.texts.append(result)
            tool_results.append(result)
            continue
        if pending:
            raise _unanswered(pending, index)
        tool_results = []
        content = message.get("content")
        call_ids = _tool_call_ids(message, path, sim) if role == "assistant" else []
        if content is None and not call_ids and role != "assistant":
            raise missing(f"{path}.content")
        text = (
            "" if content is None else _content_text(content, f"{path}.content", role, model, sim)
        )
        sim.texts.append(text)
        if role == "user":
            sim.last_user_text = text
        answerable = set(call_ids)
        pending = list(call_ids)
    if pending:
        raise _unanswered(pending, len(messages))
    sim.tool_results = tool_results


# --- tools and output format ------------------------------------------------------------


def _check_name(container: dict[str, Any], param: str) -> str:
    name: str = require(container, "name", param, str, "a string")
    if len(name) > 64:
        message = (
            f"Invalid '{param}': string too long. Expected a string with maximum length 64, "
            f"but got a string with length {len(name)} instead."
        )
        raise openai_error(400, message, param=param, code="string_above_max_length")
    if not _NAME_PATTERN.match(name):
        message = (
            f"Invalid '{param}': string does not match pattern. Expected a string that matches "
            "the pattern '^[a-zA-Z0-9_-]+$'."
        )
        raise openai_error(400, message, param=param, code="invalid_value")
    return name


def _parse_tools(body: dict[str, Any], sim: SimInput) -> bool:
    """Read ``tools`` and ``tool_choice`` and return whether the choice names a function."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid_type("tools", "an array", tools)
        if len(tools) > 128:
            message = (
                "Invalid 'tools': array too long. Expected an array with maximum length 128, "
                f"but got an array with length {len(tools)} instead."
            )
            raise openai_error(400, message, param="tools", code="array_above_max_length")
        for number, tool in enumerate(tools):
            sim.tools.append(_parse_tool(tool, f"tools[{number}]", sim))
    choice = body.get("tool_choice")
    if choice is None:
        return False
    if not sim.tools:
        message = (
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified."
        )
        raise openai_error(400, message, param="tool_choice")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise invalid_value("tool_choice", choice, ("none", "auto", "required"))
        sim.tool_choice = choice
        return False
    if not isinstance(choice, dict):
        raise invalid_type("tool_choice", "one of a string or object", choice)
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise missing("tool_choice.function.name")
    if name not in {tool_name for tool_name, _ in sim.tools}:
        message = f"Invalid value for 'tool_choice': function '{name}' is not in 'tools'."
        raise openai_error(400, message, param="tool_choice", code="invalid_value")
    sim.tool_choice = name
    return True


def _parse_tool(tool: Any, path: str, sim: SimInput) -> tuple[str, dict[str, Any]]:
    if not isinstance(tool, dict):
        raise invalid_type(path, "an object", tool)
    kind = tool.get("type")
    if kind not in ("function", "custom"):
        raise invalid_value(f"{path}.type", kind, ("function", "custom"))
    spec = require(tool, kind, f"{path}.{kind}", dict, "an object")
    name = _check_name(spec, f"{path}.{kind}.name")
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid_type(f"{path}.{kind}.parameters", "an object", parameters)
    sim.texts.append(f"{name} {spec.get('description', '')}")
    return name, parameters


def _parse_response_format(body: dict[str, Any], sim: SimInput) -> None:
    response_format = object_field(body, "response_format")
    if response_format is None:
        return
    kind = response_format.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise invalid_value("response_format.type", kind, ("json_object", "json_schema", "text"))
    if kind == "json_object":
        if not any("json" in text.lower() for text in sim.texts):
            message = (
                "'messages' must contain the word 'json' in some form, to use 'response_format' "
                "of type 'json_object'."
            )
            raise openai_error(400, message, param="messages")
        sim.json_mode = True
    elif kind == "json_schema":
        spec = require(
            response_format, "json_schema", "response_format.json_schema", dict, "an object"
        )
        _check_name(spec, "response_format.json_schema.name")
        schema = spec.get("schema") or {}
        if not isinstance(schema, dict):
            raise invalid_type("response_format.json_schema.schema", "an object", schema)
        sim.json_schema = schema


def _parse_stop(body: dict[str, Any], model: OpenAIModel) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if not model.supports_stop:
        raise _unsupported_parameter("stop")
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list) or not all(isinstance(item, str) for item in stop):
        raise invalid_type("stop", "one of a string or array of strings", stop)
    if len(stop) > 4:
        message = (
            "Invalid 'stop': array too long. Expected an array with maximum length 4, "
            f"but got an array with length {len(stop)} instead."
        )
        raise openai_error(400, message, param="stop", code="array_above_max_length")
    return stop


# --- model-specific rules ---------------------------------------------------------------


def _unsupported_parameter(param: str, hint: str = "") -> ApiError:
    message = f"Unsupported parameter: '{param}' is not supported with this model.{hint}"
    return openai_error(400, message, param=param, code="unsupported_parameter")


def _check_reasoning_rules(body: dict[str, Any], model: OpenAIModel) -> int:
    """Apply the reasoning-model restrictions and return the reasoning tokens to spend."""
    effort = body.get("reasoning_effort")
    if not model.is_reasoning:
        if effort is not None:
            raise _unsupported_parameter("reasoning_effort")
        return 0
    if body.get("max_tokens") is not None:
        raise _unsupported_parameter("max_tokens", " Use 'max_completion_tokens' instead.")
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        message = (
            f"Unsupported value: 'temperature' does not support {temperature} with this model. "
            "Only the default (1) value is supported."
        )
        raise openai_error(400, message, param="temperature", code="unsupported_value")
    for param in ("top_p", "presence_penalty", "frequency_penalty", "top_logprobs", "logit_bias"):
        if body.get(param) is not None:
            raise _unsupported_parameter(param)
    if body.get("logprobs"):
        raise _unsupported_parameter("logprobs")
    if effort is None:
        effort = model.default_effort or "medium"
    if effort not in model.reasoning_efforts:
        message = (
            f"Unsupported value: 'reasoning_effort' does not support '{effort}' with this "
            f"model. Supported values are: {supported_values(model.reasoning_efforts)}."
        )
        raise openai_error(400, message, param="reasoning_effort", code="unsupported_value")
    return _REASONING_TOKENS.get(str(effort), 64)


# --- entry point ------------------------------------------------------------------------


def _check_sampling(body: dict[str, Any]) -> None:
    """Check the model-independent types and ranges of the sampling fields."""
    number_field(body, "temperature", 0, 2)
    number_field(body, "top_p", 0, 1)
    number_field(body, "presence_penalty", -2, 2)
    number_field(body, "frequency_penalty", -2, 2)
    integer_field(body, "n", 1, 128)
    integer_field(body, "max_tokens", 1)
    integer_field(body, "max_completion_tokens", 1)
    integer_field(body, "seed")
    integer_field(body, "top_logprobs", 0, 20)
    logit_bias = object_field(body, "logit_bias") or {}
    for token, bias in logit_bias.items():
        if isinstance(bias, bool) or not isinstance(bias, int | float):
            raise invalid_type(f"logit_bias.{token}", "a decimal", bias)
        check_range(f"logit_bias.{token}", bias, -100, 100, "decimal")
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        message = (
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
            "'top_logprobs' is used."
        )
        raise openai_error(400, message, param="top_logprobs", code="invalid_value")


def parse_chat_request(body: dict[str, Any], model: OpenAIModel) -> ChatRequest:
    """Validate a chat request for ``model`` and convert it to the neutral input.

    Raises ``ApiError`` with the body the real API sends for the first problem found.
    """
    _check_sampling(body)
    stream = boolean_field(body, "stream", False)
    stream_options = object_field(body, "stream_options")
    if stream_options is not None and not stream:
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        raise openai_error(400, message, param="stream_options", code="invalid_value")
    logprobs = boolean_field(body, "logprobs", False)
    parallel = boolean_field(body, "parallel_tool_calls", True)
    reasoning_tokens = _check_reasoning_rules(body, model)

    sim = SimInput(model=model.response_name)
    _parse_messages(body.get("messages"), model, sim)
    forced = _parse_tools(body, sim)
    _parse_response_format(body, sim)
    sim.stop = _parse_stop(body, model)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None:
        reasoning_tokens = min(reasoning_tokens, limit)
        sim.max_tokens = limit - reasoning_tokens
    options = stream_options or {}
    return ChatRequest(
        model=model,
        sim_input=sim,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        include_obfuscation=options.get("include_obfuscation", True) is not False,
        n=body.get("n") or 1,
        logprobs=logprobs,
        top_logprobs=body.get("top_logprobs") or 0,
        parallel_tool_calls=parallel,
        forced_function=forced,
        reasoning_tokens=reasoning_tokens,
        unknown_fields=[key for key in body if key not in KNOWN_CHAT_FIELDS],
    )
