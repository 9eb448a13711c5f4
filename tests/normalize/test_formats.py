"""Tests for tool choice and response format across targets."""

from __future__ import annotations

import pytest

from smartflow.core.errors import InvalidRequest
from smartflow.core.types import Message, ResponseFormat, TextPart, ToolCall, ToolChoice
from smartflow.normalize import Policy, ProfileSet, load_profiles, normalize, normalize_detailed
from tests.normalize.builders import SCHEMA, SEARCH, WEATHER, chat, json_schema
from tests.normalize.test_traps import find


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return load_profiles()


# --- json_schema to a provider without it -------------------------------------------


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o", "openai"),
        ("gemini-2.5-flash", "gemini"),
        ("command-a-03-2025", "cohere"),
        ("claude-sonnet-4-5", "anthropic"),
    ],
)
def test_json_schema_native(profiles: ProfileSet, model: str, provider: str) -> None:
    request = chat(response_format=json_schema(), max_tokens=100)

    result = normalize_detailed(request, model, provider, profiles=profiles)

    assert result.request.response_format == request.response_format
    assert result.json_tool is None
    assert [c.rule for c in result.changes] == []


def test_json_schema_to_json_mode_only_model(profiles: ProfileSet) -> None:
    request = chat(response_format=json_schema())

    result, changes = normalize(request, "gpt-4-turbo", "openai", profiles=profiles)

    assert result.response_format == ResponseFormat("json_object")
    change = find(changes, "response_format", "derive")
    assert (change.before, change.after) == ("json_schema", "json_object")
    assert "does not enforce the schema" in change.reason


def test_json_schema_downgrade_refused_by_policy(profiles: ProfileSet) -> None:
    request = chat(response_format=json_schema())

    with pytest.raises(InvalidRequest) as caught:
        normalize(
            request,
            "gpt-4-turbo",
            "openai",
            policy=Policy(schema_to_json_object=False),
            profiles=profiles,
        )

    assert caught.value.param == "response_format"


@pytest.mark.parametrize(
    ("model", "provider", "choice"),
    [
        ("claude-3-5-sonnet-20241022", "anthropic", ToolChoice("tool", "json_output")),
        ("anthropic.claude-3-haiku-20240307-v1:0", "bedrock", ToolChoice("tool", "json_output")),
        ("amazon.nova-pro-v1:0", "bedrock", ToolChoice("tool", "json_output")),
        ("mistral.mistral-large-2407-v1:0", "bedrock", ToolChoice("required")),
    ],
)
def test_json_schema_as_forced_tool(
    profiles: ProfileSet, model: str, provider: str, choice: ToolChoice
) -> None:
    request = chat(response_format=json_schema(), max_tokens=100)

    result = normalize_detailed(request, model, provider, profiles=profiles)

    assert result.request.response_format is None
    assert result.json_tool == "json_output"
    assert [t.name for t in result.request.tools] == ["json_output"]
    assert result.request.tools[0].parameters == SCHEMA
    assert result.request.tool_choice == choice
    assert find(result.changes, "response_format", "derive").after == "tool:json_output"


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("meta.llama3-1-70b-instruct-v1:0", "bedrock"),
        ("amazon.titan-text-express-v1", "bedrock"),
        ("cohere.command-r-v1:0", "bedrock"),
    ],
)
def test_json_schema_without_equivalent_rejected(
    profiles: ProfileSet, model: str, provider: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        normalize(chat(response_format=json_schema()), model, provider, profiles=profiles)

    assert caught.value.param == "response_format"
    assert "no equivalent" in caught.value.message


def test_json_schema_tool_blocked_by_caller_tools(profiles: ProfileSet) -> None:
    request = chat(response_format=json_schema(), tools=[WEATHER], max_tokens=100)

    with pytest.raises(InvalidRequest):
        normalize(request, "claude-3-5-sonnet-20241022", "anthropic", profiles=profiles)


def test_json_schema_tool_beside_caller_tools_under_none(profiles: ProfileSet) -> None:
    request = chat(
        response_format=json_schema(),
        tools=[WEATHER],
        tool_choice=ToolChoice("none"),
        max_tokens=100,
    )

    result = normalize_detailed(
        request, "claude-3-5-sonnet-20241022", "anthropic", profiles=profiles
    )

    assert [t.name for t in result.request.tools] == ["get_weather", "json_output"]
    assert result.request.tool_choice == ToolChoice("tool", "json_output")
    assert find(result.changes, "tool_choice", "derive").before == "none"


def test_json_schema_tool_turns_thinking_off(profiles: ProfileSet) -> None:
    request = chat(response_format=json_schema(), reasoning_effort="low", max_tokens=8000)

    result = normalize_detailed(request, "claude-sonnet-4-20250514", "anthropic", profiles=profiles)

    assert result.json_tool == "json_output"
    assert result.request.sampling.thinking_budget is None
    assert "reasoning is turned off" in find(result.changes, "thinking_budget", "drop").reason


def test_cohere_rejects_format_with_tools(profiles: ProfileSet) -> None:
    request = chat(response_format=ResponseFormat("json_object"), tools=[WEATHER])

    with pytest.raises(InvalidRequest) as caught:
        normalize(request, "command-a-03-2025", "cohere", profiles=profiles)

    assert "together with tools" in caught.value.message


def test_json_object_to_claude_is_open_schema_tool(profiles: ProfileSet) -> None:
    request = chat(response_format=ResponseFormat("json_object"), max_tokens=100)

    result = normalize_detailed(request, "claude-sonnet-4-5", "anthropic", profiles=profiles)

    assert result.request.tools[0].parameters == {"type": "object"}
    assert result.json_tool == "json_output"


def test_text_format_passes_everywhere(profiles: ProfileSet) -> None:
    request = chat(response_format=ResponseFormat("text"))
    for model, provider in [("meta.llama3-8b-instruct-v1:0", "bedrock"), ("o3", "openai")]:
        result, changes = normalize(request, model, provider, profiles=profiles)

        assert result.response_format == ResponseFormat("text")
        assert changes == []


# --- tool choice ----------------------------------------------------------------------


def test_cohere_named_tool_becomes_required(profiles: ProfileSet) -> None:
    request = chat(tools=[WEATHER, SEARCH], tool_choice=ToolChoice("tool", "search"))

    result, changes = normalize(request, "command-a-03-2025", "cohere", profiles=profiles)

    assert result.tool_choice == ToolChoice("required")
    assert [t.name for t in result.tools] == ["search"]
    change = find(changes, "tool_choice", "derive")
    assert (change.before, change.after) == ("tool:search", "required")


def test_named_tool_missing_is_rejected(profiles: ProfileSet) -> None:
    request = chat(tools=[WEATHER], tool_choice=ToolChoice("tool", "nope"))

    with pytest.raises(InvalidRequest):
        normalize(request, "command-a-03-2025", "cohere", profiles=profiles)


def test_tool_choice_none_on_bedrock_removes_tools(profiles: ProfileSet) -> None:
    request = chat(tools=[WEATHER], tool_choice=ToolChoice("none"), max_tokens=100)

    result, changes = normalize(
        request, "anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrock", profiles=profiles
    )

    assert result.tools == []
    assert result.tool_choice is None
    assert find(changes, "tool_choice", "derive").after == "no_tools"


def test_bedrock_none_with_history_dropped(profiles: ProfileSet) -> None:
    messages = [
        Message("user", [TextPart("Weather in Paris?")]),
        Message("assistant", tool_calls=[ToolCall("c1", "get_weather", '{"city":"Paris"}')]),
        Message("tool", [TextPart("sunny")], tool_call_id="c1"),
    ]
    request = chat(
        tools=[WEATHER], tool_choice=ToolChoice("none"), messages=messages, max_tokens=100
    )

    result, changes = normalize(
        request, "anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrock", profiles=profiles
    )

    assert [t.name for t in result.tools] == ["get_weather"]
    assert result.tool_choice is None
    assert find(changes, "tool_choice", "drop")


def test_required_on_llama_is_dropped(profiles: ProfileSet) -> None:
    request = chat(tools=[WEATHER], tool_choice=ToolChoice("required"))

    result, changes = normalize(
        request, "meta.llama3-1-70b-instruct-v1:0", "bedrock", profiles=profiles
    )

    assert result.tool_choice is None
    assert find(changes, "tool_choice", "drop").before == "required"


def test_tools_on_titan_rejected(profiles: ProfileSet) -> None:
    with pytest.raises(InvalidRequest) as caught:
        normalize(
            chat(tools=[WEATHER]), "amazon.titan-text-express-v1", "bedrock", profiles=profiles
        )

    assert caught.value.param == "tools"


def test_forced_tool_turns_claude_thinking_off(profiles: ProfileSet) -> None:
    request = chat(
        tools=[WEATHER],
        tool_choice=ToolChoice("required"),
        reasoning_effort="high",
        max_tokens=20000,
    )

    result, changes = normalize(request, "claude-sonnet-4-5", "anthropic", profiles=profiles)

    assert result.tool_choice == ToolChoice("required")
    assert result.sampling.thinking_budget is None
    assert find(changes, "thinking_budget", "drop")


def test_forced_tool_on_claude_5_sets_effort_none(profiles: ProfileSet) -> None:
    request = chat(tools=[WEATHER], tool_choice=ToolChoice("tool", "get_weather"), max_tokens=1000)

    result, changes = normalize(request, "claude-opus-5", "anthropic", profiles=profiles)

    assert result.tool_choice == ToolChoice("tool", "get_weather")
    assert result.sampling.reasoning_effort == "none"
    change = find(changes, "reasoning_effort", "derive")
    assert (change.before, change.after, change.source) == (None, "none", "profile")


def test_forced_tool_on_gemini_3_pro_keeps_thinking(profiles: ProfileSet) -> None:
    request = chat(tools=[WEATHER], tool_choice=ToolChoice("required"))

    result, changes = normalize(request, "gemini-3-pro-preview", "gemini", profiles=profiles)

    assert result.tool_choice == ToolChoice("required")
    assert changes == []


def test_tool_choice_without_tools_dropped(profiles: ProfileSet) -> None:
    result, changes = normalize(
        chat(tool_choice=ToolChoice("auto")), "gpt-4o", "openai", profiles=profiles
    )

    assert result.tool_choice is None
    assert "no tools" in find(changes, "tool_choice", "drop").reason


def test_parallel_tool_calls_without_tools_dropped(profiles: ProfileSet) -> None:
    result, changes = normalize(
        chat(parallel_tool_calls=False), "gpt-4o", "openai", profiles=profiles
    )

    assert result.sampling.parallel_tool_calls is None
    assert find(changes, "parallel_tool_calls", "drop")


def test_azure_minimal_effort_drops_parallel_tool_calls(profiles: ProfileSet) -> None:
    request = chat(tools=[WEATHER], parallel_tool_calls=False, reasoning_effort="minimal")

    azure, azure_changes = normalize(request, "gpt-5-mini", "azure", profiles=profiles)
    openai, openai_changes = normalize(request, "gpt-5-mini", "openai", profiles=profiles)

    assert azure.sampling.parallel_tool_calls is None
    assert "effort minimal" in find(azure_changes, "parallel_tool_calls", "drop").reason
    assert openai.sampling.parallel_tool_calls is False
    assert openai_changes == []
