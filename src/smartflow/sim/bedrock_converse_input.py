"""Validation of Converse / ConverseStream request bodies and their reduction to ``SimInput``.

The checks run in the order Bedrock applies them: service-model constraints first
(all reported together), then the conversation rules and the model's capabilities
(the first failure is reported).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from smartflow.sim.bedrock_converse_tools import (
    check_tool_config,
    check_tool_name,
    check_tool_pairs,
    check_tool_result,
    check_tool_use_id,
    tool_choice,
)
from smartflow.sim.bedrock_errors import validation_error
from smartflow.sim.bedrock_models import ModelSpec
from smartflow.sim.bedrock_validation import (
    ConstraintViolations,
    claude_thinking_budget,
    expect_type,
)
from smartflow.sim.script import SimInput

__all__ = ["ConverseCall", "image_matches_format", "parse_converse"]

IMAGE_FORMATS = ["png", "jpeg", "gif", "webp"]
_CONTENT_BLOCK_KINDS = (
    "text",
    "image",
    "document",
    "video",
    "audio",
    "toolUse",
    "toolResult",
    "guardContent",
    "cachePoint",
    "reasoningContent",
    "citationsContent",
    "searchResult",
)
# Claude's own request fields that Converse passes through additionalModelRequestFields.
_CLAUDE_EXTRA_FIELDS = frozenset({"top_k", "thinking", "anthropic_beta"})


@dataclass(slots=True)
class ConverseCall:
    """A validated Converse request."""

    sim_input: SimInput
    max_tokens: int
    thinking_budget: int | None = None
    response_field_paths: list[str] = field(default_factory=list)


def image_matches_format(data: bytes, image_format: str) -> bool:
    """Check an image's leading bytes against its declared format."""
    if image_format == "png":
        return data.startswith(b"\x89PNG\r\n\x1a\n")
    if image_format == "jpeg":
        return data.startswith(b"\xff\xd8\xff")
    if image_format == "gif":
        return data.startswith((b"GIF87a", b"GIF89a"))
    if image_format == "webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return False


def parse_converse(body: Any, spec: ModelSpec, *, streaming: bool) -> ConverseCall:
    """Validate a Converse body for ``spec`` and return what the simulated model needs.

    Raises ``BedrockError`` with Bedrock's error type and message.
    """
    if not isinstance(body, dict):
        raise validation_error("The request body must be a JSON object.")
    if spec.is_embedding:
        raise validation_error(
            "This action doesn't support the model that you provided. Try again with a "
            "supported text or chat model."
        )
    violations = ConstraintViolations()
    messages = _typed(body, "messages", "list")
    system = _typed(body, "system", "list")
    inference = _typed(body, "inferenceConfig", "object") or {}
    tool_config = _typed(body, "toolConfig", "object")
    extra_fields = _typed(body, "additionalModelRequestFields", "object") or {}
    field_paths = _typed(body, "additionalModelResponseFieldPaths", "list") or []
    output_config = _typed(body, "outputConfig", "object")

    _check_inference_config(inference, violations)
    _check_messages_shape(messages or [], violations)
    _check_field_paths(field_paths, violations)
    tools = check_tool_config(tool_config, violations) if tool_config is not None else []
    violations.raise_if_any()

    sim_input = SimInput(model=spec.model_id)
    sim_input.texts.extend(_system_texts(system or []))
    _check_conversation(messages or [], spec, has_tool_config=tool_config is not None)
    _collect_messages(messages or [], sim_input)
    _check_capabilities(spec, system=bool(system), tools=tools, streaming=streaming)
    sim_input.tools = tools
    sim_input.tool_choice = tool_choice(tool_config, spec, tools)
    sim_input.json_schema = _output_schema(output_config)

    max_tokens = _check_max_tokens(inference, spec)
    sim_input.stop = _check_stop_sequences(inference, spec)
    thinking_budget = None
    if spec.family == "anthropic":
        thinking_budget = _check_claude_fields(extra_fields, spec, inference, max_tokens)
        if thinking_budget is not None and sim_input.tool_choice != "auto":
            raise validation_error(
                "The model returned the following errors: Thinking may not be enabled when "
                "tool_choice forces tool use."
            )
    sim_input.max_tokens = max_tokens
    return ConverseCall(
        sim_input=sim_input,
        max_tokens=max_tokens,
        thinking_budget=thinking_budget,
        response_field_paths=list(field_paths),
    )


def _typed(body: dict[str, Any], key: str, kind: str) -> Any:
    value = body.get(key)
    if value is not None:
        expect_type(value, kind, key)
    return value


# --- service-model constraints ------------------------------------------------------------


def _check_inference_config(inference: dict[str, Any], violations: ConstraintViolations) -> None:
    path = "inferenceConfig"
    if "maxTokens" in inference:
        expect_type(inference["maxTokens"], "integer", f"{path}.maxTokens")
        violations.check_range(f"{path}.maxTokens", inference["maxTokens"], 1, None)
    for name in ("temperature", "topP"):
        if name in inference:
            expect_type(inference[name], "number", f"{path}.{name}")
            violations.check_range(f"{path}.{name}", inference[name], 0, 1)
    stops = inference.get("stopSequences")
    if stops is not None:
        expect_type(stops, "list", f"{path}.stopSequences")
        violations.check_length(f"{path}.stopSequences", stops, 0, 2500)
        for number, stop in enumerate(stops, start=1):
            member = f"{path}.stopSequences.{number}.member"
            expect_type(stop, "string", member)
            violations.check_length(member, stop, 1, None)


def _check_field_paths(paths: list[Any], violations: ConstraintViolations) -> None:
    violations.check_length("additionalModelResponseFieldPaths", paths, 0, 10)
    for number, path in enumerate(paths, start=1):
        member = f"additionalModelResponseFieldPaths.{number}.member"
        expect_type(path, "string", member)
        violations.check_length(member, path, 1, 256)


def _check_messages_shape(messages: list[Any], violations: ConstraintViolations) -> None:
    for number, message in enumerate(messages, start=1):
        path = f"messages.{number}.member"
        expect_type(message, "object", path)
        role = message.get("role")
        if role is None:
            violations.add(f"{path}.role", None, "Member must not be null")
        else:
            violations.check_enum(f"{path}.role", role, ["user", "assistant", "system"])
        content = message.get("content")
        if content is None:
            violations.add(f"{path}.content", None, "Member must not be null")
            continue
        expect_type(content, "list", f"{path}.content")
        for block_number, block in enumerate(content, start=1):
            _check_block_shape(block, f"{path}.content.{block_number}.member", violations)


def _check_block_shape(block: Any, path: str, violations: ConstraintViolations) -> None:
    expect_type(block, "object", path)
    kinds = [key for key in block if key in _CONTENT_BLOCK_KINDS]
    unknown = [key for key in block if key not in _CONTENT_BLOCK_KINDS]
    if unknown:
        raise validation_error(
            f"Unknown member '{unknown[0]}' in the ContentBlock at '{path}'. Set exactly one of: "
            + ", ".join(_CONTENT_BLOCK_KINDS)
            + "."
        )
    if len(kinds) != 1:
        violations.add(path, None if not kinds else kinds, "Member must have exactly one field set")
        return
    if "image" in block:
        _check_image_shape(block["image"], f"{path}.image", violations)
    elif "toolUse" in block:
        tool_use = block["toolUse"]
        expect_type(tool_use, "object", f"{path}.toolUse")
        check_tool_use_id(tool_use.get("toolUseId"), f"{path}.toolUse.toolUseId", violations)
        check_tool_name(tool_use.get("name"), f"{path}.toolUse.name", violations)
        if tool_use.get("input") is None:
            violations.add(f"{path}.toolUse.input", None, "Member must not be null")
    elif "toolResult" in block:
        result = block["toolResult"]
        expect_type(result, "object", f"{path}.toolResult")
        check_tool_use_id(result.get("toolUseId"), f"{path}.toolResult.toolUseId", violations)
        if result.get("content") is None:
            violations.add(f"{path}.toolResult.content", None, "Member must not be null")
        else:
            expect_type(result["content"], "list", f"{path}.toolResult.content")
        if "status" in result:
            violations.check_enum(
                f"{path}.toolResult.status", result["status"], ["success", "error"]
            )
    elif "text" in block:
        expect_type(block["text"], "string", f"{path}.text")


def _check_image_shape(image: Any, path: str, violations: ConstraintViolations) -> None:
    expect_type(image, "object", path)
    image_format = image.get("format")
    if image_format is None:
        violations.add(f"{path}.format", None, "Member must not be null")
    else:
        # Bedrock leaves the value of image fields out of the message.
        violations.check_enum(f"{path}.format", image_format, IMAGE_FORMATS, show_value=False)
    source = image.get("source")
    if source is None:
        violations.add(f"{path}.source", None, "Member must not be null")
        return
    expect_type(source, "object", f"{path}.source")
    if "bytes" not in source and "s3Location" not in source:
        violations.add(f"{path}.source", None, "Member must have exactly one field set")


# --- conversation rules -------------------------------------------------------------------


def _check_conversation(
    messages: list[dict[str, Any]], spec: ModelSpec, *, has_tool_config: bool
) -> None:
    if not messages or messages[0].get("role") != "user":
        raise validation_error(
            "A conversation must start with a user message. Try again with a conversation that "
            "starts with a user message."
        )
    for index, message in enumerate(messages):
        if message["role"] == "system":
            # NOTE: wording is the simulator's own. Bedrock accepts only user and
            # assistant turns, but its message for a system turn is not documented.
            raise validation_error(
                f"The role system in messages.{index} is not supported. Put the system prompt "
                "in the system field."
            )
        if index and message["role"] == messages[index - 1]["role"]:
            raise validation_error(
                "A conversation must alternate between user and assistant roles. Make sure the "
                "conversation alternates between user and assistant roles and try again."
            )
        if not message["content"]:
            raise validation_error(
                f"The content field in the Message object at messages.{index} is empty. Add a "
                "ContentBlock object to the content field and try again."
            )
        for block_index, block in enumerate(message["content"]):
            _check_block(block, f"messages.{index}.content.{block_index}", spec, has_tool_config)
    check_tool_pairs(messages)


def _check_block(block: dict[str, Any], path: str, spec: ModelSpec, has_tool_config: bool) -> None:
    if "text" in block and not block["text"].strip():
        raise validation_error(
            f"The text field in the ContentBlock object at {path} is blank. Add text to the text "
            "field, and try again."
        )
    if ("toolUse" in block or "toolResult" in block) and not has_tool_config:
        raise validation_error(
            "The toolConfig field must be defined when using toolUse and toolResult content blocks."
        )
    if "image" in block:
        _check_image(block["image"], path, spec)
    if "toolResult" in block:
        check_tool_result(block["toolResult"], f"{path}.toolResult", spec)


def _check_image(image: dict[str, Any], path: str, spec: ModelSpec) -> None:
    if not spec.vision:
        raise validation_error("This model doesn't support the image field for user messages.")
    source = image["source"]
    if "bytes" not in source:
        # NOTE: S3 image locations are not simulated.
        raise validation_error(f"The simulator supports only source.bytes images, at {path}.image.")
    data = source["bytes"]
    try:
        decoded = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        raise validation_error(
            f"Invalid base64 image data at {path}.image.source.bytes. Send the image bytes "
            "base64-encoded in the JSON body."
        )
    if not image_matches_format(decoded, image["format"]):
        raise validation_error(
            "The model returned the following errors: The provided image does not match the "
            "specified image format."
        )


# --- reduction to SimInput ----------------------------------------------------------------


def _system_texts(system: list[Any]) -> list[str]:
    texts = []
    for number, block in enumerate(system, start=1):
        expect_type(block, "object", f"system.{number}.member")
        if "text" in block:
            expect_type(block["text"], "string", f"system.{number}.member.text")
            if not block["text"]:
                raise validation_error(
                    f"1 validation error detected: Value '' at 'system.{number}.member.text' "
                    "failed to satisfy constraint: Member must have length greater than or "
                    "equal to 1"
                )
            texts.append(block["text"])
    return texts


def _result_text(result: dict[str, Any]) -> str:
    parts = []
    for item in result["content"]:
        if not isinstance(item, dict):
            continue
        if "text" in item:
            parts.append(str(item["text"]))
        elif "json" in item:
            parts.append(json.dumps(item["json"], sort_keys=True))
    return " ".join(parts)


def _collect_messages(messages: list[dict[str, Any]], sim_input: SimInput) -> None:
    for message in messages:
        texts = []
        for block in message["content"]:
            if "text" in block:
                texts.append(block["text"])
                sim_input.texts.append(block["text"])
            elif "image" in block:
                sim_input.image_count += 1
            elif "toolUse" in block:
                sim_input.texts.append(json.dumps(block["toolUse"]["input"], sort_keys=True))
            elif "toolResult" in block:
                sim_input.texts.append(_result_text(block["toolResult"]))
                sim_input.image_count += sum(
                    1 for item in block["toolResult"]["content"] if "image" in item
                )
        if message["role"] == "user" and texts:
            sim_input.last_user_text = " ".join(texts)
    last = messages[-1]
    if last["role"] == "user":
        sim_input.tool_results = [
            _result_text(block["toolResult"]) for block in last["content"] if "toolResult" in block
        ]


def _check_capabilities(
    spec: ModelSpec, *, system: bool, tools: list[tuple[str, dict[str, Any]]], streaming: bool
) -> None:
    if system and not spec.system:
        # NOTE: wording modelled on Bedrock's "doesn't support the stopSequences field".
        raise validation_error(
            "This model doesn't support system messages. Remove the system field and try again."
        )
    if tools and not spec.tools:
        raise validation_error("This model doesn't support tool use.")
    if tools and streaming and not spec.streaming_tools:
        raise validation_error("This model doesn't support tool use in streaming mode.")


def _output_schema(output_config: dict[str, Any] | None) -> dict[str, Any] | None:
    if not output_config or "textFormat" not in output_config:
        return None
    text_format = output_config["textFormat"]
    expect_type(text_format, "object", "outputConfig.textFormat")
    if text_format.get("type") != "json_schema":
        raise validation_error(
            "1 validation error detected: Value at 'outputConfig.textFormat.type' failed to "
            "satisfy constraint: Member must satisfy enum value set: [json_schema]"
        )
    definition = (text_format.get("structure") or {}).get("jsonSchema") or {}
    raw_schema = definition.get("schema")
    path = "outputConfig.textFormat.structure.jsonSchema.schema"
    if not isinstance(raw_schema, str):
        raise validation_error(
            f"1 validation error detected: Value null at '{path}' failed to satisfy constraint: "
            "Member must not be null"
        )
    try:
        schema = json.loads(raw_schema)
    except json.JSONDecodeError as exc:
        raise validation_error(
            f"The value at {path} is not valid JSON: {exc.msg}. Provide the JSON schema as a "
            "string."
        ) from None
    if not isinstance(schema, dict):
        raise validation_error(f"The value at {path} must be a JSON schema object.")
    return schema


def _check_max_tokens(inference: dict[str, Any], spec: ModelSpec) -> int:
    requested = inference.get("maxTokens")
    if requested is None:
        return spec.max_output_tokens
    if requested > spec.max_output_tokens:
        limit = spec.max_output_tokens
        raise validation_error(
            f"The maximum tokens you requested exceeds the model limit of {limit}. Try again "
            f"with a maximum tokens value that is lower than {limit}."
        )
    return int(requested)


def _check_stop_sequences(inference: dict[str, Any], spec: ModelSpec) -> list[str]:
    stops = list(inference.get("stopSequences") or [])
    if spec.allowed_stop_sequences is not None:
        other = [stop for stop in stops if stop not in spec.allowed_stop_sequences]
        if other:
            # NOTE: the wording is the simulator's own. The limit is from the Titan Text docs.
            allowed = " and ".join(spec.allowed_stop_sequences)
            raise validation_error(
                f"This model supports only the stop sequences {allowed}. Remove the other "
                "stopSequences values and try again."
            )
    if spec.max_stop_sequences is not None and len(stops) > spec.max_stop_sequences:
        raise validation_error(
            "The model returned the following errors: stop_sequences: at most "
            f"{spec.max_stop_sequences} stop sequences are allowed, got {len(stops)}."
        )
    return stops


def _check_claude_fields(
    extra: dict[str, Any], spec: ModelSpec, inference: dict[str, Any], max_tokens: int
) -> int | None:
    """Check Claude's own fields in additionalModelRequestFields and return the thinking budget."""
    for key in extra:
        if key not in _CLAUDE_EXTRA_FIELDS:
            raise validation_error(
                f"The model returned the following errors: {key}: Extra inputs are not permitted"
            )
    if "top_k" in extra:
        expect_type(extra["top_k"], "integer", "additionalModelRequestFields.top_k")
    try:
        return claude_thinking_budget(
            extra.get("thinking"),
            spec,
            max_tokens=max_tokens,
            temperature=inference.get("temperature"),
        )
    except ValueError as exc:
        raise validation_error(f"The model returned the following errors: {exc}") from None
