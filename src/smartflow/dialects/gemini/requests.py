"""Canonical requests to Gemini ``generateContent`` bodies (Gemini API and Vertex AI)."""

from __future__ import annotations

import mimetypes
import re
from typing import Any
from urllib.parse import urlsplit

import orjson

from smartflow.core.errors import InvalidRequest
from smartflow.core.types import ChatRequest, ImagePart, Message, TextPart, Tool, ToolCall
from smartflow.dialects.gemini.responses import split_call_id

__all__ = ["SKIP_SIGNATURE", "build_request"]

# A placeholder signature for function calls that Gemini did not produce (such as history
# from another model), because Gemini 3 rejects a call turn without a signature.
# NOTE: the value comes from third-party clients that cite Google's thought-signature
# FAQ, and was not checked against Google's own page.
SKIP_SIGNATURE = "skip_thought_signature_validator"

# Thinking budgets for reasoning_effort on models that take thinkingBudget (Gemini 2.5).
# NOTE: these are estimates within the documented 2.5 Flash range, not Google's mapping.
_EFFORT_BUDGETS = {
    "none": 0,
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 24576,
}
_EFFORT_LEVELS = {"none": "minimal", "xhigh": "high"}
_MAJOR_VERSION = re.compile(r"gemini-(\d+)")
_FILE_SCHEMES = ("http", "https", "gs")


# --- contents --------------------------------------------------------------------------


def _image_part(part: ImagePart, path: str) -> dict[str, Any]:
    if part.data is not None:
        return {"inlineData": {"mimeType": part.media_type or "image/png", "data": part.data}}
    url = part.url or ""
    if urlsplit(url).scheme not in _FILE_SCHEMES:
        raise InvalidRequest(
            f"Unsupported image URL at '{path}': Gemini takes images as base64 data or as "
            "http, https or gs:// URLs.",
            param=path,
        )
    file_data: dict[str, Any] = {"fileUri": url}
    media_type = part.media_type or mimetypes.guess_type(urlsplit(url).path)[0]
    if media_type:
        file_data["mimeType"] = media_type
    return {"fileData": file_data}


def _user_parts(message: Message, path: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for number, part in enumerate(message.content):
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            parts.append(_image_part(part, f"{path}.content[{number}]"))
    return parts


def _call_arguments(call: ToolCall, path: str) -> dict[str, Any]:
    try:
        value = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"Invalid JSON in '{path}': tool call arguments must be a JSON object.", param=path
        ) from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid value for '{path}': expected a JSON object.", param=path)
    return value


def _model_parts(message: Message, path: str, names: dict[str, str]) -> list[dict[str, Any]]:
    # Reasoning is not replayed: Gemini thought summaries are not meant as input.
    parts = [{"text": p.text} for p in message.content if isinstance(p, TextPart) and p.text]
    signed = any(split_call_id(call.id)[1] for call in message.tool_calls)
    for number, call in enumerate(message.tool_calls):
        names[call.id] = call.name
        gemini_id, signature = split_call_id(call.id)
        function_call: dict[str, Any] = {
            "name": call.name,
            "args": _call_arguments(call, f"{path}.tool_calls[{number}].function.arguments"),
        }
        if gemini_id is not None:
            function_call["id"] = gemini_id
        rendered: dict[str, Any] = {"functionCall": function_call}
        if signature is not None:
            rendered["thoughtSignature"] = signature
        elif number == 0 and not signed:
            # Gemini 3 validates the signature of the first call of each turn.
            rendered["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(rendered)
    return parts


def _function_response(message: Message) -> dict[str, Any]:
    """Wrap a tool result as the JSON object Gemini requires.

    A JSON-object result is sent as it is. Other text goes under ``output``, or under
    ``error`` for a failed call, the keys the Google Gen AI SDK documents.
    """
    text = message.text()
    try:
        value = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return {"error": value} if message.is_error else value
    return {"error": text} if message.is_error else {"output": text}


def _tool_result_parts(message: Message, path: str, names: dict[str, str]) -> list[dict[str, Any]]:
    call_id = message.tool_call_id or ""
    name = names.get(call_id) or message.name
    if not name:
        raise InvalidRequest(
            f"The tool result at '{path}' is for call {call_id!r}, which no earlier assistant "
            "message made. Gemini needs the function name, so include the assistant message "
            "with that tool call.",
            param=f"{path}.tool_call_id",
        )
    gemini_id, _ = split_call_id(call_id)
    function_response: dict[str, Any] = {"name": name, "response": _function_response(message)}
    if gemini_id is not None:
        function_response["id"] = gemini_id
    parts: list[dict[str, Any]] = [{"functionResponse": function_response}]
    for number, part in enumerate(message.content):
        if isinstance(part, ImagePart):
            parts.append(_image_part(part, f"{path}.content[{number}]"))
    return parts


def _render_contents(request: ChatRequest) -> list[dict[str, Any]]:
    """Render the turns, merging adjacent turns of one role so that parallel tool
    results share one user turn as Gemini requires."""
    names: dict[str, str] = {}
    contents: list[dict[str, Any]] = []
    for number, message in enumerate(request.messages):
        path = f"messages[{number}]"
        if message.role == "system":
            continue
        if message.role == "assistant":
            role, parts = "model", _model_parts(message, path, names)
        elif message.role == "tool":
            role, parts = "user", _tool_result_parts(message, path, names)
        else:
            role, parts = "user", _user_parts(message, path)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    if not contents:
        raise InvalidRequest(
            "The request has no user or assistant message with content; Gemini needs at least one.",
            param="messages",
        )
    return contents


# --- tools -----------------------------------------------------------------------------


def _render_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    declarations = []
    for index, tool in enumerate(tools):
        if tool.builtin is not None:
            raise InvalidRequest(
                f"Tool 'tools[{index}]' is a built-in tool of the {tool.builtin_dialect} API, "
                "which a Gemini model cannot run. Remove it or route to that provider.",
                param=f"tools[{index}]",
            )
        declaration: dict[str, Any] = {"name": tool.name}
        if tool.description:
            declaration["description"] = tool.description
        if tool.parameters:
            # Plain JSON Schema, so keywords such as additionalProperties and $defs keep
            # their meaning (the older ``parameters`` field takes an OpenAPI subset).
            declaration["parametersJsonSchema"] = tool.parameters
        declarations.append(declaration)
    return [{"functionDeclarations": declarations}]


def _render_tool_config(request: ChatRequest) -> dict[str, Any] | None:
    # NOTE: Gemini has no switch for parallel function calls, so parallel_tool_calls
    # is not sent.
    choice = request.tool_choice
    if choice is None or not request.tools:
        return None
    config: dict[str, Any]
    if choice.mode == "none":
        config = {"mode": "NONE"}
    elif choice.mode == "required":
        config = {"mode": "ANY"}
    elif choice.mode == "tool":
        config = {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    else:
        config = {"mode": "AUTO"}
    return {"functionCallingConfig": config}


# --- generationConfig ------------------------------------------------------------------


def _uses_thinking_level(model: str) -> bool:
    match = _MAJOR_VERSION.match(model.removeprefix("models/"))
    return match is not None and int(match.group(1)) >= 3


def _thinking_config(request: ChatRequest, model: str) -> dict[str, Any] | None:
    s = request.sampling
    if s.thinking_budget is not None:
        return {"thinkingBudget": s.thinking_budget, "includeThoughts": s.thinking_budget != 0}
    effort = s.reasoning_effort
    if effort is None:
        return None
    if _uses_thinking_level(model):
        # NOTE: Gemini 3 Pro takes only low and high, so other levels get Gemini's 400.
        return {"thinkingLevel": _EFFORT_LEVELS.get(effort, effort), "includeThoughts": True}
    budget = _EFFORT_BUDGETS.get(effort)
    if budget is None:
        raise InvalidRequest(
            f"Invalid value for 'reasoning_effort': {effort!r}. Use one of: "
            f"{', '.join(_EFFORT_BUDGETS)}.",
            param="reasoning_effort",
        )
    return {"thinkingBudget": budget, "includeThoughts": budget != 0}


def _apply_logprobs(request: ChatRequest, config: dict[str, Any]) -> None:
    """Write ``responseLogprobs`` and ``logprobs`` (the count of top alternatives).

    Gemini rejects ``logprobs`` unless ``responseLogprobs`` is true, so a request with
    ``top_logprobs`` but no ``logprobs: true`` is rejected here with the OpenAI message.
    """
    # NOTE: the canonical response has no logprobs, so the logprobs that Gemini returns
    # in candidates[].logprobsResult do not reach the client yet.
    s = request.sampling
    if s.logprobs is not None:
        config["responseLogprobs"] = s.logprobs
    if s.top_logprobs is None:
        return
    if s.logprobs is not True:
        raise InvalidRequest(
            "Invalid request: 'top_logprobs' is set but 'logprobs' is not true. Set "
            "'logprobs' to true, or remove 'top_logprobs'.",
            param="top_logprobs",
        )
    config["logprobs"] = s.top_logprobs


def _generation_config(request: ChatRequest, model: str) -> dict[str, Any]:
    s = request.sampling
    if s.n is not None and s.n > 1:
        # The canonical response contains one choice, so more candidates would be lost.
        raise InvalidRequest(
            f"The gateway returns one choice from Gemini models, so 'n' must be 1 (got {s.n}).",
            param="n",
        )
    config: dict[str, Any] = {}
    optional = (
        ("temperature", s.temperature),
        ("topP", s.top_p),
        ("topK", s.top_k),
        ("maxOutputTokens", s.max_tokens),
        ("candidateCount", s.n),
        ("seed", s.seed),
        ("presencePenalty", s.presence_penalty),
        ("frequencyPenalty", s.frequency_penalty),
    )
    for name, value in optional:
        if value is not None:
            config[name] = value
    if s.stop:
        config["stopSequences"] = s.stop
    _apply_logprobs(request, config)
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        config["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema:
            # responseJsonSchema takes plain JSON Schema. responseSchema would need the
            # OpenAPI subset, which rejects additionalProperties on the Gemini API.
            config["responseJsonSchema"] = fmt.schema
    thinking = _thinking_config(request, model)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    return config


def build_request(request: ChatRequest, model: str) -> dict[str, Any]:
    """Render a canonical request as a ``generateContent`` body (the model is in the URL)."""
    body: dict[str, Any] = {"contents": _render_contents(request)}
    system = request.system_text()
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if request.tools:
        body["tools"] = _render_tools(request.tools)
    tool_config = _render_tool_config(request)
    if tool_config is not None:
        body["toolConfig"] = tool_config
    generation = _generation_config(request, model)
    if generation:
        body["generationConfig"] = generation
    return body
