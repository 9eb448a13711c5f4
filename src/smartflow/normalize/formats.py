"""Tool choice and response format: modes a target lacks and their nearest equivalents.

Rules, in the order the engine applies them:

- Tools on a target without tools: reject, because no equivalent exists.
- ``tool_choice`` without tools: drop, because there is nothing to choose.
- ``tool_choice: tool`` (one named tool) on a target without it: ``required`` with
  only that tool sent forces the same call; otherwise drop.
- ``tool_choice: none`` on a target without it: remove the tools, so the model cannot
  call one. A conversation that already contains tool calls or results needs the tool
  definitions, so there the choice is dropped and the model may call a tool.
- A forced ``tool_choice`` on a target that rejects it while reasoning: reasoning is
  turned off, because the caller's forced call is a functional requirement and the
  reasoning level is a quality setting. Where reasoning cannot be turned off, the
  forced choice is dropped.
- ``response_format`` tries the family's options in order. ``native`` sends it as it
  is. ``tool`` forces a tool whose input schema is the requested schema; it applies
  when the request has no tools, or forbids calling them with ``tool_choice: none`` and
  the target can force a tool by name. ``json_object`` keeps JSON mode without the
  schema, if the policy allows. When no option fits, the request is rejected, so the
  format is never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from smartflow.core.types import Message, ResponseFormat, Tool, ToolChoice
from smartflow.normalize.compiled import CompiledFamily
from smartflow.normalize.policy import Policy
from smartflow.normalize.reasoning import ReasoningState, disable_reasoning
from smartflow.normalize.report import Recorder

__all__ = ["FormatResult", "apply_response_format", "apply_tool_choice", "choice_label"]

_FORCED = ("required", "tool")
_JSON_TOOL_DESCRIPTION = "Reply by calling this tool; its input is the complete response."


@dataclass(slots=True)
class FormatResult:
    """Tools, tool choice and response format of the normalized request.

    ``json_tool`` names the forced tool that replaces the response format and carries
    the JSON reply. The gateway returns that tool's input as the reply text.
    """

    tools: list[Tool]
    tool_choice: ToolChoice | None
    response_format: ResponseFormat | None
    json_tool: str | None = None


def choice_label(choice: ToolChoice) -> str:
    """Return a short label for a tool choice, e.g. ``required`` or ``tool:search``."""
    return f"tool:{choice.name}" if choice.mode == "tool" else choice.mode


def _has_tool_history(messages: list[Message]) -> bool:
    return any(m.tool_calls or m.role == "tool" for m in messages)


def apply_tool_choice(
    family: CompiledFamily,
    messages: list[Message],
    tools: list[Tool],
    choice: ToolChoice | None,
    state: ReasoningState,
    recorder: Recorder,
) -> tuple[list[Tool], ToolChoice | None]:
    """Return the tools and tool choice the target accepts, recording each change."""
    if tools and not family.tools_supported:
        detail = f" ({family.tools_reason})" if family.tools_reason else ""
        recorder.reject("tools", tools, f"{family.id} does not accept tools{detail}")
    if choice is None:
        return tools, None
    label = choice_label(choice)
    wire = family.spec.tools.wire

    if not tools:
        reason = "the request has no tools, so there is nothing to choose from"
        recorder.change("tool_choice", "drop", label, None, reason)
        return tools, None
    if choice.mode == "tool" and all(tool.name != choice.name for tool in tools):
        recorder.reject("tool_choice", label, f"the request has no tool named {choice.name}")
    modes = family.choice_modes
    if choice.mode in modes:
        return _keep_choice(family, tools, choice, state, recorder, label, wire)
    supported = ", ".join(sorted(modes)) or "none"
    limit = f"{family.id} accepts tool_choice modes: {supported}"
    if choice.mode == "tool" and "required" in modes:
        chosen = [tool for tool in tools if tool.name == choice.name]
        reason = f"{limit}; 'required' with only tool {choice.name} sent forces the same call"
        recorder.change("tool_choice", "derive", label, "required", reason, wire=wire)
        kept_tools, kept_choice = _keep_forced(
            family, chosen, ToolChoice("required"), state, recorder, "required"
        )
        # A dropped forced choice must not leave the caller with only the named tool.
        return (kept_tools, kept_choice) if kept_choice is not None else (tools, None)
    if choice.mode == "none" and not _has_tool_history(messages):
        reason = f"{limit}; the tools are removed so the model cannot call one"
        recorder.change("tool_choice", "derive", label, "no_tools", reason)
        return [], None
    if choice.mode == "auto":
        reason = f"{limit}; the model chooses freely by default"
    else:
        reason = f"{limit}; the model decides on its own whether to call a tool"
    recorder.change("tool_choice", "drop", label, None, reason)
    return tools, None


def _keep_choice(
    family: CompiledFamily,
    tools: list[Tool],
    choice: ToolChoice,
    state: ReasoningState,
    recorder: Recorder,
    label: str,
    wire: str | None,
) -> tuple[list[Tool], ToolChoice | None]:
    if choice.mode in _FORCED:
        return _keep_forced(family, tools, choice, state, recorder, label, record_keep=True)
    rule = "rename" if wire and wire.rsplit(".", 1)[-1] != "tool_choice" else "pass"
    recorder.keep("tool_choice", rule, label, wire, "request")
    return tools, choice


def _keep_forced(
    family: CompiledFamily,
    tools: list[Tool],
    choice: ToolChoice,
    state: ReasoningState,
    recorder: Recorder,
    label: str,
    *,
    record_keep: bool = False,
) -> tuple[list[Tool], ToolChoice | None]:
    """Keep a forced choice; turn reasoning off first when the target requires it."""
    if state.active and not family.reasoning.forced_tool_choice:
        reason = (
            f"{family.id} rejects a forced tool_choice while reasoning is on; the forced "
            "tool_choice is kept and reasoning is turned off"
        )
        if not disable_reasoning(family, state, recorder, reason):
            reason = (
                f"{family.id} rejects a forced tool_choice while reasoning is on, and "
                "reasoning cannot be turned off"
            )
            recorder.change("tool_choice", "drop", label, None, reason)
            return tools, None
    if record_keep:
        wire = family.spec.tools.wire
        rule = "rename" if wire and wire.rsplit(".", 1)[-1] != "tool_choice" else "pass"
        recorder.keep("tool_choice", rule, label, wire, "request")
    return tools, choice


def apply_response_format(
    family: CompiledFamily,
    response_format: ResponseFormat | None,
    tools: list[Tool],
    choice: ToolChoice | None,
    state: ReasoningState,
    recorder: Recorder,
    policy: Policy,
) -> FormatResult:
    """Return the response format, or its nearest equivalent, that the target accepts."""
    result = FormatResult(tools, choice, response_format)
    if response_format is None:
        return result
    kind = response_format.type
    wire = family.spec.response_format.wire
    kept_rule = "pass" if wire is None or wire.rsplit(".", 1)[-1] == "response_format" else "rename"

    if kind == "text":
        recorder.keep("response_format", "pass", kind, None, "request")
        return result
    if tools and not family.format_with_tools:
        reason = f"{family.id} does not accept response_format together with tools"
        recorder.reject("response_format", kind, reason)
    options = family.json_schema_options if kind == "json_schema" else family.json_object_options
    for option in options:
        if option == "native":
            recorder.keep("response_format", kept_rule, kind, wire, "request")
            return result
        if option == "json_object" and policy.schema_to_json_object:
            reason = (
                f"{family.id} has no JSON schema mode; JSON mode returns valid JSON but does "
                "not enforce the schema"
            )
            recorder.change("response_format", "derive", kind, "json_object", reason, wire=wire)
            result.response_format = ResponseFormat("json_object")
            return result
        if option == "tool" and _force_json_tool(
            family, response_format, result, state, recorder, policy
        ):
            return result
    detail = f" ({family.format_reason})" if family.format_reason else ""
    recorder.reject(
        "response_format", kind, f"{family.id} has no equivalent of response_format {kind}{detail}"
    )
    return result


def _force_json_tool(
    family: CompiledFamily,
    response_format: ResponseFormat,
    result: FormatResult,
    state: ReasoningState,
    recorder: Recorder,
    policy: Policy,
) -> bool:
    """Replace the response format with a forced tool; return False if that is impossible.

    The target must be able to force the tool: by naming it, or by ``required`` when it
    is the only tool sent. Caller tools stay only under ``tool_choice: none``.
    """
    modes = family.choice_modes
    caller_choice = result.tool_choice
    name = policy.json_tool_name
    if result.tools:
        # Caller tools may stay only when the caller forbade calling them and the target
        # can force the JSON tool by name.
        if caller_choice is None or caller_choice.mode != "none" or "tool" not in modes:
            return False
        if any(tool.name == name for tool in result.tools):
            return False
    elif "tool" not in modes and "required" not in modes:
        return False
    kind = response_format.type
    if state.active and not family.reasoning.forced_tool_choice:
        reason = (
            f"{family.id} rejects the forced tool that carries response_format {kind} while "
            "reasoning is on; the format is kept and reasoning is turned off"
        )
        if not disable_reasoning(family, state, recorder, reason):
            return False
    schema = response_format.schema if kind == "json_schema" else None
    tool = Tool(
        name=name,
        description=_JSON_TOOL_DESCRIPTION,
        parameters=schema if schema is not None else {"type": "object"},
        strict=response_format.strict,
    )
    forced = ToolChoice("tool", name) if "tool" in modes else ToolChoice("required")
    reason = (
        f"{family.id} has no native {kind} mode; a forced call of tool {name}, whose input "
        "schema is the requested one, carries the JSON reply"
    )
    recorder.change("response_format", "derive", kind, f"tool:{name}", reason)
    before = None if caller_choice is None else choice_label(caller_choice)
    recorder.change(
        "tool_choice",
        "derive",
        before,
        choice_label(forced),
        f"forces tool {name}, which carries response_format {kind}",
        source="request" if caller_choice is not None else "profile",
    )
    result.tools = [*result.tools, tool]
    result.tool_choice = forced
    result.response_format = None
    result.json_tool = name
    return True
