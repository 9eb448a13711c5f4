"""Converse checks for tools: tool specs, tool choice and the pairing of toolUse and toolResult."""

from __future__ import annotations

import re
from typing import Any

from smartflow.sim.bedrock_errors import validation_error
from smartflow.sim.bedrock_models import ModelSpec
from smartflow.sim.bedrock_validation import ConstraintViolations, expect_type

__all__ = [
    "check_tool_config",
    "check_tool_name",
    "check_tool_pairs",
    "check_tool_result",
    "check_tool_use_id",
    "tool_choice",
]

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_.:-]+$")


def check_tool_use_id(value: Any, path: str, violations: ConstraintViolations) -> None:
    if value is None:
        violations.add(path, None, "Member must not be null")
        return
    expect_type(value, "string", path)
    violations.check_length(path, value, 1, 64)
    if value and not _TOOL_USE_ID.match(value):
        violations.add(
            path, value, "Member must satisfy regular expression pattern: [a-zA-Z0-9_.:-]+"
        )


def check_tool_name(value: Any, path: str, violations: ConstraintViolations) -> None:
    if value is None:
        violations.add(path, None, "Member must not be null")
        return
    expect_type(value, "string", path)
    violations.check_length(path, value, 1, 64)
    if value and not _TOOL_NAME.match(value):
        violations.add(
            path, value, "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+"
        )


def check_tool_config(
    tool_config: dict[str, Any], violations: ConstraintViolations
) -> list[tuple[str, dict[str, Any]]]:
    """Check toolConfig's constraints and return the name and JSON schema of each toolSpec."""
    tools = tool_config.get("tools")
    if tools is None:
        violations.add("toolConfig.tools", None, "Member must not be null")
        return []
    expect_type(tools, "list", "toolConfig.tools")
    violations.check_length("toolConfig.tools", tools, 1, None)
    specs: list[tuple[str, dict[str, Any]]] = []
    for number, tool in enumerate(tools, start=1):
        path = f"toolConfig.tools.{number}.member"
        expect_type(tool, "object", path)
        tool_spec = tool.get("toolSpec")
        if tool_spec is None:
            continue  # cachePoint and systemTool entries carry no schema
        expect_type(tool_spec, "object", f"{path}.toolSpec")
        check_tool_name(tool_spec.get("name"), f"{path}.toolSpec.name", violations)
        schema = (tool_spec.get("inputSchema") or {}).get("json")
        if schema is None:
            violations.add(f"{path}.toolSpec.inputSchema", None, "Member must not be null")
            continue
        expect_type(schema, "object", f"{path}.toolSpec.inputSchema.json")
        specs.append((str(tool_spec.get("name")), schema))
    return specs


def check_tool_result(result: dict[str, Any], path: str, spec: ModelSpec) -> None:
    """Check a toolResult block against Bedrock's rules for its content."""
    content = result["content"]
    if result.get("status") == "error" and not content:
        raise validation_error(
            f"The content field at {path} cannot be empty when status value is error."
        )
    for index, item in enumerate(content):
        if isinstance(item, dict) and "json" in item and not isinstance(item["json"], dict):
            raise validation_error(
                f"The format of the value at {path}.content.{index}.json is invalid. Provide a "
                "json object for the field and try again."
            )
        if isinstance(item, dict) and "image" in item and not spec.vision:
            raise validation_error("This model doesn't support the image field for user messages.")


def check_tool_pairs(messages: list[dict[str, Any]]) -> None:
    """Check that each assistant toolUse has a matching toolResult in the next turn."""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        use_ids = [b["toolUse"]["toolUseId"] for b in message["content"] if "toolUse" in b]
        if not use_ids:
            continue
        if index + 1 >= len(messages):
            continue  # the conversation ends on the assistant's turn (prefill)
        following = messages[index + 1]["content"]
        result_ids = [b["toolResult"]["toolUseId"] for b in following if "toolResult" in b]
        where = f"messages.{index + 1}.content"
        if len(result_ids) > len(use_ids):
            raise validation_error(
                f"The number of toolResult blocks at {where} exceeds the number of toolUse "
                "blocks of previous turn."
            )
        missing = [use_id for use_id in use_ids if use_id not in result_ids]
        if missing:
            raise validation_error(
                f"Expected toolResult blocks at {where} for the following Ids: "
                + ", ".join(missing)
            )
    for index, message in enumerate(messages):
        if message["role"] != "user":
            continue
        previous = messages[index - 1]["content"] if index else []
        answered = {b["toolUse"]["toolUseId"] for b in previous if "toolUse" in b}
        orphans = [
            b["toolResult"]["toolUseId"]
            for b in message["content"]
            if "toolResult" in b and b["toolResult"]["toolUseId"] not in answered
        ]
        if orphans and not answered:
            raise validation_error(
                f"The number of toolResult blocks at messages.{index}.content exceeds the number "
                "of toolUse blocks of previous turn."
            )


def tool_choice(
    tool_config: dict[str, Any] | None, spec: ModelSpec, tools: list[tuple[str, dict[str, Any]]]
) -> str:
    """Map toolConfig.toolChoice to the script's choice: ``auto``, ``required`` or a name."""
    choice = (tool_config or {}).get("toolChoice")
    if choice is None:
        return "auto"
    expect_type(choice, "object", "toolConfig.toolChoice")
    kinds = [key for key in ("auto", "any", "tool") if key in choice]
    if len(kinds) != 1:
        raise validation_error(
            "1 validation error detected: Value at 'toolConfig.toolChoice' failed to satisfy "
            "constraint: Member must have exactly one field set"
        )
    kind = kinds[0]
    if kind != "auto" and not spec.forced_tool_choice:
        raise validation_error(
            f"This model doesn't support the toolConfig.toolChoice.{kind} field. Remove "
            f"toolConfig.toolChoice.{kind} and try again."
        )
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    name = (choice["tool"] or {}).get("name")
    if name not in {tool_name for tool_name, _ in tools}:
        # NOTE: the wording is the simulator's own. Bedrock rejects such a request, but
        # its message is not documented.
        raise validation_error(
            f"The tool {name!r} named in toolConfig.toolChoice.tool is not defined in "
            "toolConfig.tools."
        )
    return str(name)
