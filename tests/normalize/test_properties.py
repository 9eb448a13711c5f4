"""Property tests: random canonical requests against every model family."""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartflow.core.errors import InvalidRequest
from smartflow.core.types import (
    ChatRequest,
    Message,
    ResponseFormat,
    Sampling,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
)
from smartflow.normalize import (
    EFFORTS,
    RULES,
    Normalized,
    Policy,
    changes_to_dicts,
    load_profiles,
    normalize_detailed,
    report_header,
)
from tests.normalize.builders import SCHEMA
from tests.normalize.validator import SAMPLING_PARAMS, violations

PROFILES = load_profiles()
TARGETS = sorted(
    (family.provider, family.spec.examples[0], family_id)
    for family_id, family in PROFILES.families.items()
)
# NORMALIZE_EXAMPLES raises the example count for a deeper, randomized local run.
_EXAMPLES = os.environ.get("NORMALIZE_EXAMPLES")
SETTINGS = settings(
    max_examples=int(_EXAMPLES or 1500),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=_EXAMPLES is None,
)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


STOP_ITEMS = st.one_of(st.sampled_from(["", "User:", "||", "\n\n", "END"]), st.text(max_size=6))
SAMPLINGS = st.builds(
    Sampling,
    temperature=_optional(st.floats(0, 3, allow_nan=False)),
    top_p=_optional(st.floats(0, 1)),
    top_k=_optional(st.integers(0, 800)),
    max_tokens=_optional(st.integers(1, 200_000)),
    stop=_optional(st.lists(STOP_ITEMS, max_size=7)),
    frequency_penalty=_optional(st.floats(-2, 2)),
    presence_penalty=_optional(st.floats(-2, 2)),
    seed=_optional(st.integers(-(2**31), 2**31)),
    n=_optional(st.integers(1, 4)),
    logprobs=_optional(st.booleans()),
    top_logprobs=_optional(st.integers(0, 25)),
    reasoning_effort=_optional(st.sampled_from(EFFORTS)),
    thinking_budget=_optional(st.one_of(st.sampled_from([-1, 0]), st.integers(1, 150_000))),
    parallel_tool_calls=_optional(st.booleans()),
)
TOOL_SETS = st.sampled_from(
    [
        [],
        [Tool("lookup", parameters={"type": "object"})],
        [Tool("lookup", parameters={"type": "object"}), Tool("fetch")],
    ]
)
CHOICES = _optional(
    st.one_of(
        st.sampled_from([ToolChoice("auto"), ToolChoice("none"), ToolChoice("required")]),
        st.sampled_from([ToolChoice("tool", "lookup"), ToolChoice("tool", "fetch")]),
    )
)
FORMATS = _optional(
    st.sampled_from(
        [
            ResponseFormat("text"),
            ResponseFormat("json_object"),
            ResponseFormat("json_schema", schema=SCHEMA, name="answer"),
        ]
    )
)
HISTORY = [
    Message("user", [TextPart("Look it up.")]),
    Message("assistant", tool_calls=[ToolCall("c1", "lookup", "{}")]),
    Message("tool", [TextPart("found")], tool_call_id="c1"),
]


@st.composite
def requests(draw: st.DrawFn) -> ChatRequest:
    tools = draw(TOOL_SETS)
    history = HISTORY if tools and draw(st.booleans()) else []
    return ChatRequest(
        model="caller-model",
        messages=[Message("user", [TextPart("Hello")]), *history],
        sampling=draw(SAMPLINGS),
        tools=list(tools),
        tool_choice=draw(CHOICES),
        response_format=draw(FORMATS),
        user=draw(_optional(st.sampled_from(["user-1", "someone@example.test"]))),
    )


POLICIES = st.builds(
    Policy,
    range_rules=st.sampled_from([{}, {"temperature": "scale", "top_p": "scale"}]),
    thinking_fit=st.sampled_from(["lower_budget", "raise_max_tokens"]),
    answer_tokens=st.sampled_from([1, 1024, 4096]),
)


def _input_params(request: ChatRequest) -> set[str]:
    names = {
        name
        for name in (*SAMPLING_PARAMS, "reasoning_effort", "thinking_budget")
        if getattr(request.sampling, name) is not None
    }
    if request.user is not None:
        names.add("user")
    if request.tool_choice is not None:
        names.add("tool_choice")
    if request.response_format is not None:
        names.add("response_format")
    return names


def _output_params(request: ChatRequest) -> set[str]:
    return _input_params(request)


def _accounted(result: Normalized) -> set[str]:
    names = {change.param for change in result.accounting}
    names |= {change.into for change in result.accounting if change.into is not None}
    return names


@SETTINGS
@given(request=requests(), target=st.sampled_from(TARGETS), policy=POLICIES)
def test_every_parameter_accounted_and_valid(
    request: ChatRequest, target: tuple[str, str, str], policy: Policy
) -> None:
    provider, model, family_id = target
    original = copy.deepcopy(request)
    try:
        result = normalize_detailed(request, model, provider, policy=policy, profiles=PROFILES)
    except InvalidRequest as error:
        assert error.param is not None
        assert request == original
        return

    assert request == original
    assert result.family == family_id
    missing_inputs = _input_params(request) - _accounted(result)
    assert not missing_inputs, f"input parameters without an entry: {missing_inputs}"
    missing_outputs = _output_params(result.request) - _accounted(result)
    assert not missing_outputs, f"output parameters without an entry: {missing_outputs}"
    problems = violations(PROFILES.specs[family_id], result.request)
    assert not problems, problems
    for change in result.accounting:
        assert change.rule in RULES, change
        assert change.reason or change.rule in ("pass", "rename"), change
    header = report_header(result.accounting)
    assert re.fullmatch(r"[\x21-\x7e]*", header), header
    orjson.dumps(changes_to_dicts(result.accounting))
    if result.json_tool is not None:
        assert result.request.tool_choice is not None
        assert result.json_tool in {tool.name for tool in result.request.tools}


def _normalized_fields(request: ChatRequest) -> tuple[Any, ...]:
    return (
        request.sampling,
        request.tools,
        request.tool_choice,
        request.response_format,
        request.user,
        request.messages,
    )


@SETTINGS
@given(request=requests(), target=st.sampled_from(TARGETS))
def test_strict_mode_passes_unchanged_or_raises(
    request: ChatRequest, target: tuple[str, str, str]
) -> None:
    provider, model, family_id = target
    try:
        result = normalize_detailed(request, model, provider, strict=True, profiles=PROFILES)
    except InvalidRequest as error:
        assert error.param is not None
        return

    assert _normalized_fields(result.request) == _normalized_fields(request)
    assert result.changes == []
    assert violations(PROFILES.specs[family_id], result.request) == []
