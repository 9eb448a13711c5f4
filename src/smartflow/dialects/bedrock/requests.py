"""Canonical requests as Bedrock Converse bodies or Claude InvokeModel bodies."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import orjson

from smartflow.core.errors import ConfigError, InvalidRequest
from smartflow.core.types import (
    ChatRequest,
    ImagePart,
    Message,
    Part,
    ResponseFormat,
    Sampling,
    TextPart,
    Tool,
    ToolCall,
)
from smartflow.dialects.anthropic import requests as anthropic_requests

__all__ = [
    "ANTHROPIC_BEDROCK_VERSION",
    "INFERENCE_PROFILE_PREFIXES",
    "accepts_images",
    "base_model_id",
    "build_converse_request",
    "build_invoke_request",
    "check_images",
    "is_claude",
]

logger = logging.getLogger(__name__)

ANTHROPIC_BEDROCK_VERSION = "bedrock-2023-05-31"
# Geography prefixes of cross-region inference profile ids, such as "us." in
# "us.anthropic.claude-sonnet-4-20250514-v1:0".
INFERENCE_PROFILE_PREFIXES = frozenset({"us", "eu", "apac", "global", "us-gov", "jp", "au", "ca"})

# Base model ids without image input on Converse, from the "Supported models and model
# features" table of the Bedrock user guide. Models not listed are sent images as given.
# NOTE: this is a deny list, so a new text-only model family needs an entry here. Until
# then Bedrock itself rejects the image with a ValidationException (400).
_TEXT_ONLY_PREFIXES = (
    "ai21.",
    "amazon.nova-micro-",
    "amazon.titan-text-",
    "amazon.titan-tg1-",
    "anthropic.claude-3-5-haiku-",
    "anthropic.claude-instant-",
    "anthropic.claude-v2",
    "cohere.command-",
    "deepseek.",
    "meta.llama2-",
    "meta.llama3-8b-",
    "meta.llama3-70b-",
    "meta.llama3-1-",
    "meta.llama3-2-1b-",
    "meta.llama3-2-3b-",
    "meta.llama3-3-",
    "mistral.mistral-",
    "mistral.mixtral-",
)
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
# ARN resource types whose name is a model id or a cross-region inference-profile id.
_MODEL_ARN_TYPES = ("foundation-model", "inference-profile")
_ARN = re.compile(r"^arn:[^:]+:bedrock:[^:]*:[^:]*:([a-z-]+)/(.+)$")
# Claude's own request fields; InvokeModel rejects the other keys build_request may add.
_INVOKE_DROPPED = ("model", "stream", "metadata")


# --- model ids and capabilities -------------------------------------------------------


def base_model_id(model_id: str) -> str | None:
    """Reduce a model id, inference-profile id or ARN to the base model id.

    ``arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-8b-instruct-v1:0`` and
    ``us.meta.llama3-8b-instruct-v1:0`` both give ``meta.llama3-8b-instruct-v1:0``.
    Returns None for an ARN that names no model, such as that of an application
    inference profile or a provisioned model.
    """
    resource = model_id
    if model_id.startswith("arn:"):
        match = _ARN.match(model_id)
        if match is None or match.group(1) not in _MODEL_ARN_TYPES:
            return None
        resource = match.group(2)
    head, dot, rest = resource.partition(".")
    if dot and head in INFERENCE_PROFILE_PREFIXES and "." in rest:
        return rest
    return resource


def accepts_images(model_id: str) -> bool:
    base = base_model_id(model_id)
    return base is None or not base.startswith(_TEXT_ONLY_PREFIXES)


def is_claude(model_id: str) -> bool:
    base = base_model_id(model_id)
    return base is not None and base.startswith("anthropic.")


def _images(request: ChatRequest) -> Iterator[tuple[str, ImagePart]]:
    for number, message in enumerate(request.messages):
        for index, part in enumerate(message.content):
            if isinstance(part, ImagePart):
                yield f"messages[{number}].content[{index}]", part


def check_images(request: ChatRequest, model_id: str) -> None:
    """Reject images that Bedrock cannot take, before the request is sent.

    Raises InvalidRequest naming the image when the model has no image input, when the
    image is given by URL or when its media type is not PNG, JPEG, GIF or WebP.
    """
    for path, image in _images(request):
        if not accepts_images(model_id):
            raise InvalidRequest(
                f"The model {model_id} does not accept image input on Bedrock, but {path} is an "
                "image. Remove the image, or send the request to a model that accepts images.",
                param=path,
            )
        if image.url is not None:
            # The dispatcher replaces image URLs with fetched bytes before the body is
            # built, so a URL gets here only when build_body is called without that step.
            raise InvalidRequest(
                f"The image at {path} is given by URL, which Bedrock cannot fetch. Send the "
                "image data base64-encoded instead: a data: URL in an OpenAI image_url, or a "
                "base64 source in an Anthropic image block.",
                param=path,
            )
        if (image.media_type or "").lower() not in _IMAGE_FORMATS:
            raise InvalidRequest(
                f"The image at {path} has the media type {image.media_type!r}, which Bedrock "
                "does not accept. Send PNG, JPEG, GIF or WebP images.",
                param=path,
            )


# --- Converse content blocks ----------------------------------------------------------


def _image_block(part: ImagePart) -> dict[str, Any]:
    """Render an image that ``check_images`` accepted, as base64 ``bytes``."""
    image_format = _IMAGE_FORMATS[(part.media_type or "").lower()]
    return {"image": {"format": image_format, "source": {"bytes": part.data}}}


def _content_block(part: Part) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        # Bedrock rejects blank text blocks, and they carry nothing for the model.
        return {"text": part.text} if part.text.strip() else None
    if isinstance(part, ImagePart):
        return _image_block(part)
    if part.redacted_data is not None:
        return {"reasoningContent": {"redactedContent": part.redacted_data}}
    if part.signature:
        text = {"text": part.text, "signature": part.signature}
        return {"reasoningContent": {"reasoningText": text}}
    return None  # unsigned reasoning cannot be replayed to the model


def _blocks(parts: list[Part]) -> list[dict[str, Any]]:
    return [block for block in map(_content_block, parts) if block is not None]


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


def _message_blocks(message: Message, number: int) -> list[dict[str, Any]]:
    if message.role == "tool":
        result: dict[str, Any] = {
            "toolUseId": message.tool_call_id,
            "content": _blocks(message.content),
        }
        if message.is_error:
            result["status"] = "error"
        return [{"toolResult": result}]
    blocks = _blocks(message.content)
    for index, call in enumerate(message.tool_calls):
        path = f"messages[{number}].tool_calls[{index}].function.arguments"
        tool_use = {"toolUseId": call.id, "name": call.name, "input": _tool_input(call, path)}
        blocks.append({"toolUse": tool_use})
    return blocks


def _render_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """Render the turns, merging adjacent turns of one role as Converse requires."""
    out: list[dict[str, Any]] = []
    for number, message in enumerate(request.messages):
        if message.role == "system":
            continue
        blocks = _message_blocks(message, number)
        if not blocks:
            continue
        role = "assistant" if message.role == "assistant" else "user"
        if out and out[-1]["role"] == role:
            # Tool results come first in a user turn because the tool messages come first.
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


# --- the other Converse fields --------------------------------------------------------


def _inference_config(sampling: Sampling) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if sampling.max_tokens is not None:
        config["maxTokens"] = sampling.max_tokens
    if sampling.temperature is not None:
        config["temperature"] = sampling.temperature
    if sampling.top_p is not None:
        config["topP"] = sampling.top_p
    if sampling.stop:
        config["stopSequences"] = sampling.stop
    return config


def _claude_fields(sampling: Sampling) -> dict[str, Any]:
    """Collect Claude's own fields, which Converse passes on in additionalModelRequestFields."""
    fields: dict[str, Any] = {}
    if sampling.top_k is not None:
        fields["top_k"] = sampling.top_k
    # A budget of 0 (reasoning effort "none") means no thinking. Thinking is off unless
    # requested, so no field is sent, because Claude rejects enabled thinking below 1024.
    if sampling.thinking_budget:
        fields["thinking"] = {"type": "enabled", "budget_tokens": sampling.thinking_budget}
    return fields


def _top_k_field(model_id: str, top_k: int) -> dict[str, Any] | None:
    """Render top_k in the model's own additionalModelRequestFields name, if it takes one.

    The names are those of each model's native request in the Bedrock user guide: Nova
    reads ``inferenceConfig.topK``, Cohere Command models ``k`` and Mistral ``top_k``.
    """
    base = base_model_id(model_id) or ""
    if base.startswith("amazon.nova-"):
        return {"inferenceConfig": {"topK": top_k}}
    if base.startswith("cohere.command"):
        return {"k": top_k}
    if base.startswith("mistral."):
        # NOTE: the user guide lists top_k for Mistral's text completion request, but not
        # for the chat completion request of Mistral Large 2402 and Large 2 (24.07).
        # Whether Converse passes it on to those models is unconfirmed.
        return {"top_k": top_k}
    return None


def _model_fields(request: ChatRequest, model_id: str) -> dict[str, Any]:
    """Collect the additionalModelRequestFields for ``model_id``."""
    sampling = request.sampling
    if is_claude(model_id):
        return _claude_fields(sampling)
    fields: dict[str, Any] = {}
    if sampling.top_k is not None:
        fields = _top_k_field(model_id, sampling.top_k) or {}
        if not fields:
            logger.debug("%s takes no top_k through Converse, so it is not sent", model_id)
    if sampling.thinking_budget:
        logger.debug("thinking budgets go to Claude models only, so not to %s", model_id)
    return fields


def _tool_spec(tool: Tool, index: int) -> dict[str, Any]:
    if tool.builtin is not None:
        raise InvalidRequest(
            f"Tool 'tools[{index}]' is a built-in tool of the {tool.builtin_dialect} API, which "
            "a Bedrock model cannot run. Remove it or route the request to that provider.",
            param=f"tools[{index}]",
        )
    spec: dict[str, Any] = {
        "name": tool.name,
        "inputSchema": {"json": tool.parameters or {"type": "object", "properties": {}}},
    }
    if tool.description:
        spec["description"] = tool.description
    if tool.strict:
        spec["strict"] = True
    return {"toolSpec": spec}


def _history_tool_names(messages: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for message in messages:
        for block in message["content"]:
            if "toolUse" in block:
                names[block["toolUse"]["name"]] = None
    return list(names)


def _has_tool_blocks(messages: list[dict[str, Any]]) -> bool:
    return any(
        "toolUse" in block or "toolResult" in block
        for message in messages
        for block in message["content"]
    )


def _tool_config(request: ChatRequest, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Render tools and tool choice. Converse has no tool choice ``none``."""
    history = _has_tool_blocks(messages)
    choice = request.tool_choice
    if not request.tools:
        if not history:
            return None
        # Converse rejects toolUse and toolResult blocks without a toolConfig, so the tools
        # named in the conversation are declared with an open schema.
        tools = [
            {"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object"}}}}
            for name in _history_tool_names(messages)
        ]
        return {"tools": tools} if tools else None
    if choice is not None and choice.mode == "none" and not history:
        return None  # without tools the model cannot call one
    config: dict[str, Any] = {"tools": [_tool_spec(t, i) for i, t in enumerate(request.tools)]}
    if choice is None or choice.mode in ("auto", "none"):
        # NOTE: with tool choice "none" and tool calls in the conversation the tools stay
        # declared, so the model may still call one. Converse has no way to forbid it.
        return config
    if choice.mode == "required":
        config["toolChoice"] = {"any": {}}
    else:
        config["toolChoice"] = {"tool": {"name": choice.name}}
    return config


def _output_config(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    schema = response_format.schema if response_format.type == "json_schema" else None
    definition: dict[str, Any] = {
        "schema": orjson.dumps(schema or {"type": "object"}).decode(),
        "name": response_format.name or "response",
    }
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}}


def build_converse_request(request: ChatRequest, model_id: str) -> dict[str, Any]:
    """Render a canonical request as a Converse or ConverseStream body for ``model_id``."""
    messages = _render_messages(request)
    body: dict[str, Any] = {"messages": messages}
    system = [{"text": m.text()} for m in request.messages if m.role == "system" and m.text()]
    if system:
        body["system"] = system
    inference = _inference_config(request.sampling)
    if inference:
        body["inferenceConfig"] = inference
    fields = _model_fields(request, model_id)
    if fields:
        body["additionalModelRequestFields"] = fields
    if is_claude(model_id) and request.sampling.stop:
        # Converse reports that a stop sequence matched but not which one. Claude's
        # native response names it, and this path requests that field from Bedrock.
        # NOTE: "/stop_sequence" is the AWS documentation's example. The stream path
        # follows Claude's message_delta and is unconfirmed, though Converse ignores a
        # path that matches nothing, so at worst the matched text stays unknown.
        path = "/delta/stop_sequence" if request.stream else "/stop_sequence"
        body["additionalModelResponseFieldPaths"] = [path]
    tool_config = _tool_config(request, messages)
    if tool_config is not None:
        body["toolConfig"] = tool_config
    output = _output_config(request.response_format)
    if output is not None:
        body["outputConfig"] = output
    return body


# --- InvokeModel with Claude's own body -----------------------------------------------


def build_invoke_request(request: ChatRequest, model_id: str) -> dict[str, Any]:
    """Render a canonical request as Claude's InvokeModel body (Anthropic Messages shape).

    The model goes in the URL and streaming in the operation, so the body has neither.
    """
    if base_model_id(model_id) is not None and not is_claude(model_id):
        raise ConfigError(
            f"The deployment of {model_id} uses a Bedrock provider with api: invoke, which "
            "sends Claude's own request body, but the model is not an Anthropic Claude model. "
            "Route it to a Bedrock provider with api: converse."
        )
    if request.response_format is not None and request.response_format.type != "text":
        raise InvalidRequest(
            "Structured output (response_format) is not available through Bedrock InvokeModel "
            "in this gateway. Send the request to a Bedrock provider that uses the Converse API.",
            param="response_format",
        )
    body = anthropic_requests.build_request(request, model_id)
    for key in _INVOKE_DROPPED:
        body.pop(key, None)
    return {"anthropic_version": ANTHROPIC_BEDROCK_VERSION, **body}
