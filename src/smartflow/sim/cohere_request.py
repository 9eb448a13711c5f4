"""Request validation for the Cohere simulator: models, errors and Chat v2 / Embed v2 bodies.

Messages start with "invalid request: " as the real API's do; the exact wording of each
check is approximate unless it appears in Cohere's published error examples.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from smartflow.sim.script import SimInput

__all__ = [
    "CohereError",
    "CohereModel",
    "EmbedRequest",
    "ParsedChat",
    "cohere_model",
    "parse_chat_request",
    "parse_embed_request",
]

_CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "tools",
        "strict_tools",
        "documents",
        "citation_options",
        "response_format",
        "safety_mode",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "k",
        "p",
        "logprobs",
        "tool_choice",
        "thinking",
        "priority",
    }
)
_EMBED_FIELDS = frozenset(
    {
        "model",
        "texts",
        "images",
        "inputs",
        "input_type",
        "embedding_types",
        "output_dimension",
        "max_tokens",
        "truncate",
        "priority",
    }
)
_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")
_EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
_IMAGE_URL = re.compile(
    r"^(data:image/(png|jpeg|jpg|webp|gif);base64,[A-Za-z0-9+/=]+|https://\S+)$"
)


class CohereError(Exception):
    """An error returned in Cohere's ``{"id": ..., "message": ...}`` shape."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _invalid(message: str) -> CohereError:
    return CohereError(400, f"invalid request: {message}")


@dataclass(frozen=True, slots=True)
class CohereModel:
    """One served model and the features the simulator allows for it."""

    name: str
    embedding_dimensions: int | None = None
    """Default dimension for embedding models; ``None`` marks a chat model."""
    output_dimensions: tuple[int, ...] = ()
    vision: bool = False
    reasoning: bool = False
    tool_choice: bool = True
    safety_off: bool = False
    """Whether ``safety_mode: OFF`` is accepted (only models older than Command R7B)."""
    max_output_tokens: int = 8_000
    embeds_images: bool = False


def cohere_model(name: str) -> CohereModel:
    """Build the traits of a model from its name, following the public model families."""
    if name.startswith("embed-v4"):
        return CohereModel(
            name,
            embedding_dimensions=1536,
            output_dimensions=(256, 512, 1024, 1536),
            embeds_images=True,
        )
    if name.startswith("embed-"):
        dimensions = 384 if "light" in name else 1024
        return CohereModel(name, embedding_dimensions=dimensions, embeds_images=True)
    older = name.startswith(("command-r-", "command-r-plus", "command-light", "command-nightly"))
    return CohereModel(
        name,
        vision="vision" in name,
        reasoning="reasoning" in name,
        tool_choice=not older,
        safety_off=older,
        max_output_tokens=4_000 if older else 8_000,
    )


@dataclass(slots=True)
class ParsedChat:
    """A validated ``POST /v2/chat`` request."""

    sim_input: SimInput
    stream: bool = False
    documents: list[dict[str, Any]] = field(default_factory=list)
    citations: bool = True
    thinking: bool = False
    thinking_budget: int | None = None
    tool_call_ids: set[str] = field(default_factory=set)


@dataclass(slots=True)
class EmbedRequest:
    """A validated ``POST /v2/embed`` request."""

    texts: list[str]
    images: list[str]
    types: list[str]
    dimensions: int


def _number(body: dict[str, Any], name: str, low: float, high: float | None) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{name} must be a number, got {json.dumps(value)}.")
    if value < low or (high is not None and value > high):
        upper = f" and {high:g}" if high is not None else ""
        bound = f"between {low:g}{upper} inclusive" if high is not None else f"at least {low:g}"
        raise _invalid(f"{name} must be {bound}, got {value:g}.")
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{name} must be an integer, got {json.dumps(value)}.")
    if value < low:
        raise _invalid(f"{name} must be at least {low}, got {value}.")
    return value


def _check_fields(body: Any, known: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object.")
    for name in body:
        if name not in known:
            raise CohereError(400, f"unknown field: parameter {name} is not a valid field")
    return body


def parse_chat_request(body: Any, model: CohereModel) -> ParsedChat:
    """Validate a Chat v2 body and turn it into the shared ``SimInput``."""
    body = _check_fields(body, _CHAT_FIELDS)
    if model.embedding_dimensions is not None:
        raise _invalid(f"model '{model.name}' is not supported by the chat API.")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid(f"stream must be a boolean, got {json.dumps(stream)}.")
    parsed = ParsedChat(sim_input=SimInput(model=model.name), stream=stream)
    _read_tools(body, parsed)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must not be empty.")
    for index, message in enumerate(messages):
        _read_message(message, index, parsed, model)
    _read_last_turn(messages, parsed)
    _read_sampling(body, parsed, model)
    _read_output_options(body, parsed, model)
    return parsed


def _read_tools(body: dict[str, Any], parsed: ParsedChat) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _invalid("tools must be a list.")
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
        ):
            raise _invalid(f"tools[{index}] must have type 'function' and a function object.")
        name = function.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}", name):
            raise _invalid(
                f"tools[{index}].function.name must be a valid identifier, got {name!r}."
            )
        parameters = function.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise _invalid(f"tools[{index}].function.parameters must be a JSON schema object.")
        parsed.sim_input.tools.append((name, parameters))


def _content_blocks(content: Any, index: int, allowed: tuple[str, ...]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _invalid(f"messages[{index}].content must be a string or a list of content blocks.")
    for number, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in allowed:
            raise _invalid(
                f"messages[{index}].content[{number}].type must be one of {', '.join(allowed)}, "
                f"got {kind!r}."
            )
    return content


def _read_message(message: Any, index: int, parsed: ParsedChat, model: CohereModel) -> None:
    role = message.get("role") if isinstance(message, dict) else None
    if role not in ("system", "user", "assistant", "tool"):
        raise _invalid(
            f"Invalid role in messages at index {index}. Role must be one of the following: "
            "system, user, assistant, tool."
        )
    sim = parsed.sim_input
    if role == "system":
        blocks = _content_blocks(message.get("content"), index, ("text",))
        sim.texts.extend(str(b.get("text", "")) for b in blocks)
    elif role == "user":
        _read_user(message, index, parsed, model)
    elif role == "assistant":
        _read_assistant(message, index, parsed)
    else:
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise _invalid(f"messages[{index}].tool_call_id is required for tool messages.")
        if call_id not in parsed.tool_call_ids:
            raise _invalid(
                f"messages[{index}].tool_call_id '{call_id}' does not match any tool call "
                "of a previous assistant message."
            )
        sim.texts.append(_tool_content_text(message.get("content"), index))


def _read_user(message: dict[str, Any], index: int, parsed: ParsedChat, model: CohereModel) -> None:
    blocks = _content_blocks(message.get("content"), index, ("text", "image_url", "document"))
    texts = []
    for number, block in enumerate(blocks):
        if block["type"] == "text":
            if not isinstance(block.get("text"), str):
                raise _invalid(f"messages[{index}].content[{number}].text must be a string.")
            texts.append(block["text"])
        elif block["type"] == "image_url":
            image = block.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str) or not _IMAGE_URL.match(url):
                raise _invalid(
                    f"messages[{index}].content[{number}].image_url.url must be a base64 data "
                    "URI of a png, jpeg, webp or gif image, or an https URL."
                )
            if not model.vision:
                # NOTE: the wording of the real rejection of images for text-only models
                # is not confirmed.
                raise _invalid(f"model '{model.name}' does not support image inputs.")
            parsed.sim_input.image_count += 1
    if not texts and not parsed.sim_input.image_count:
        raise _invalid("message must be at least 1 token long or tool results must be specified.")
    parsed.sim_input.texts.extend(texts)
    parsed.sim_input.last_user_text = "\n".join(texts)


def _read_assistant(message: dict[str, Any], index: int, parsed: ParsedChat) -> None:
    content = message.get("content")
    if content is not None:
        for block in _content_blocks(content, index, ("text", "thinking")):
            parsed.sim_input.texts.append(str(block.get("text") or block.get("thinking") or ""))
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise _invalid(f"messages[{index}].tool_calls must be a list.")
    if content is None and not calls and not message.get("tool_plan"):
        raise _invalid(f"messages[{index}] must have content or tool_calls.")
    for number, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not call.get("id") or not isinstance(arguments, str):
            raise _invalid(
                f"messages[{index}].tool_calls[{number}] must have an id and function.arguments "
                "as a JSON string."
            )
        try:
            json.loads(arguments)
        except json.JSONDecodeError:
            raise _invalid(
                f"messages[{index}].tool_calls[{number}].function.arguments is not valid JSON."
            ) from None
        parsed.tool_call_ids.add(call["id"])
        parsed.sim_input.texts.append(f"{function.get('name', '')} {arguments}")


def _tool_content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    blocks = _content_blocks(content, index, ("text", "document"))
    texts = []
    for block in blocks:
        if block["type"] == "text":
            texts.append(str(block.get("text", "")))
        else:
            document = block.get("document") or {}
            texts.append(json.dumps(document.get("data", document), sort_keys=True))
    return " ".join(texts)


def _read_last_turn(messages: list[dict[str, Any]], parsed: ParsedChat) -> None:
    results = []
    for message in reversed(messages):
        if message["role"] != "tool":
            break
        results.append(_tool_content_text(message.get("content"), 0))
    parsed.sim_input.tool_results = list(reversed(results))


def _read_sampling(body: dict[str, Any], parsed: ParsedChat, model: CohereModel) -> None:
    sim = parsed.sim_input
    _number(body, "temperature", 0.0, None)
    _number(body, "p", 0.01, 0.99)
    _number(body, "frequency_penalty", 0.0, 1.0)
    _number(body, "presence_penalty", 0.0, 1.0)
    k = _integer(body, "k", 0)
    if k is not None and k > 500:
        raise _invalid(f"k must be between 0 and 500 inclusive, got {k}.")
    _integer(body, "seed", -(2**63))
    _integer(body, "priority", 0)
    max_tokens = _integer(body, "max_tokens", 1)
    if max_tokens is not None:
        # Values above the model's maximum are capped, not rejected.
        sim.max_tokens = min(max_tokens, model.max_output_tokens)
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _invalid("stop_sequences must be a list of strings.")
        if len(stops) > 5:
            raise _invalid(f"stop_sequences must contain at most 5 items, got {len(stops)}.")
        sim.stop = stops
    for name in ("logprobs", "strict_tools"):
        if name in body and not isinstance(body[name], bool):
            raise _invalid(f"{name} must be a boolean.")


def _read_output_options(body: dict[str, Any], parsed: ParsedChat, model: CohereModel) -> None:
    sim = parsed.sim_input
    choice = body.get("tool_choice")
    if choice is not None:
        if choice not in ("REQUIRED", "NONE"):
            raise _invalid(f"tool_choice must be one of REQUIRED, NONE, got {choice!r}.")
        if not model.tool_choice:
            raise _invalid(f"tool_choice is not supported with model '{model.name}'.")
        if choice == "REQUIRED" and not sim.tools:
            raise _invalid("tool_choice REQUIRED requires tools to be specified.")
        sim.tool_choice = "required" if choice == "REQUIRED" else "none"
    documents = body.get("documents")
    if documents is not None:
        if not isinstance(documents, list) or not documents:
            raise _invalid("list of documents must not be empty")
        for number, document in enumerate(documents):
            data = {"text": document} if isinstance(document, str) else document
            if not isinstance(data, dict):
                raise _invalid(f"documents[{number}] must be a string or an object.")
            parsed.documents.append(data)
            sim.texts.append(json.dumps(data, sort_keys=True))
    citation_options = body.get("citation_options") or {}
    if citation_options.get("mode") in ("OFF", "DISABLED"):
        parsed.citations = False
    _read_response_format(body, parsed)
    _read_safety_and_thinking(body, parsed, model)


def _read_response_format(body: dict[str, Any], parsed: ParsedChat) -> None:
    response_format = body.get("response_format")
    if response_format is None:
        return
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("text", "json_object"):
        raise _invalid(f"response_format.type must be one of text, json_object, got {kind!r}.")
    if parsed.documents:
        raise _invalid("response_format is not supported with RAG.")
    if parsed.sim_input.tools:
        raise _invalid("response_format is not supported with tools.")
    schema = response_format.get("json_schema")
    if kind == "text" and schema is not None:
        raise _invalid("response_format.json_schema must not be set when type is text.")
    if kind == "json_object":
        if schema is not None and not isinstance(schema, dict):
            raise _invalid("response_format.json_schema must be a JSON schema object.")
        parsed.sim_input.json_mode = True
        parsed.sim_input.json_schema = schema


def _read_safety_and_thinking(body: dict[str, Any], parsed: ParsedChat, model: CohereModel) -> None:
    mode = body.get("safety_mode")
    if mode is not None:
        if mode not in ("CONTEXTUAL", "STRICT", "OFF"):
            raise _invalid(f"safety_mode must be one of CONTEXTUAL, STRICT, OFF, got {mode!r}.")
        if mode == "OFF" and not model.safety_off:
            raise _invalid(f"safety_mode OFF is not supported with model '{model.name}'.")
        if parsed.sim_input.tools or parsed.documents:
            raise _invalid("safety_mode is not configurable together with tools or documents.")
    thinking = body.get("thinking")
    if thinking is None:
        parsed.thinking = model.reasoning
        return
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("enabled", "disabled"):
        raise _invalid(f"thinking.type must be one of enabled, disabled, got {kind!r}.")
    if kind == "enabled" and not model.reasoning:
        raise _invalid(f"thinking is not supported with model '{model.name}'.")
    budget = thinking.get("token_budget")
    if budget is not None and (
        not isinstance(budget, int) or isinstance(budget, bool) or budget < 1
    ):
        raise _invalid(f"thinking.token_budget must be a positive integer, got {budget!r}.")
    parsed.thinking = kind == "enabled"
    parsed.thinking_budget = budget


def parse_embed_request(body: Any, model: CohereModel) -> EmbedRequest:
    """Validate an Embed v2 body."""
    body = _check_fields(body, _EMBED_FIELDS)
    if model.embedding_dimensions is None:
        raise _invalid(f"model '{model.name}' is not supported by the embed API.")
    if body.get("input_type") not in _INPUT_TYPES:
        raise _invalid("valid input_type must be provided with the provided model")
    texts = body.get("texts") or []
    images = body.get("images") or []
    inputs = body.get("inputs") or []
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise _invalid("texts must be a list of strings.")
    if len(texts) > 96:
        raise _invalid(f"total number of texts must be at most 96 - received {len(texts)}")
    for item in inputs:
        for block in item.get("content", []) if isinstance(item, dict) else []:
            if block.get("type") == "text":
                texts.append(str(block.get("text", "")))
            elif block.get("type") == "image_url":
                images.append(str((block.get("image_url") or {}).get("url", "")))
    if images and not model.embeds_images:
        raise _invalid(f"model '{model.name}' does not support image inputs.")
    if not texts and not images:
        raise _invalid("one of texts, images or inputs must be provided.")
    types = body.get("embedding_types") or ["float"]
    if not isinstance(types, list) or any(t not in _EMBEDDING_TYPES for t in types):
        raise _invalid(f"embedding_types must be a list of {', '.join(_EMBEDDING_TYPES)}.")
    dimensions = model.embedding_dimensions or 1024
    requested = body.get("output_dimension")
    if requested is not None:
        if requested not in model.output_dimensions:
            allowed = ", ".join(str(d) for d in model.output_dimensions) or "none"
            raise _invalid(
                f"output_dimension {requested!r} is not supported by model '{model.name}'; "
                f"supported values: {allowed}."
            )
        dimensions = requested
    return EmbedRequest(texts=texts, images=images, types=types, dimensions=dimensions)
