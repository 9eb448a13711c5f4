"""Tests for the change header and the JSON form of changes."""

from __future__ import annotations

import orjson
import pytest

from smartflow.normalize import Change, changes_to_dicts, load_profiles, normalize, report_header
from tests.normalize.builders import chat


def test_header_renders_each_rule() -> None:
    changes = [
        Change("temperature", "clamp", 1.5, 1.0, "r"),
        Change("stop", "truncate", list("abcde"), list("abcd"), "r"),
        Change("top_k", "drop", 40, None, "r"),
        Change("max_tokens", "default", None, 4096, "r"),
        Change("reasoning_effort", "derive", "high", 16384, "r", into="thinking_budget"),
        Change("seed", "pin", None, 7, "r", source="pinned"),
        Change("top_p", "pass", 0.9, 0.9, ""),
        Change("max_tokens", "rename", 10, 10, ""),
    ]

    header = report_header(changes)

    assert header == (
        "temperature=clamp(1.5->1.0);stop=truncate(5->4);top_k=drop(40);"
        "max_tokens=default(4096);reasoning_effort=derive(high->thinking_budget:16384);"
        "seed=pin(->7)"
    )


def test_header_sanitizes_values_and_redacts_user() -> None:
    changes = [
        Change("tool_choice", "drop", "tool:weird name\r\nX-Evil: 1", None, "r"),
        Change("user", "drop", "alice@example.test", None, "r"),
        Change("logprobs", "derive", None, True, "r"),
    ]

    header = report_header(changes)

    assert (
        header
        == "tool_choice=drop(tool:weird_name__X-Evil:_1);user=drop(*);logprobs=derive(->true)"
    )
    assert header.isascii()


def test_header_over_limit_counts_the_rest() -> None:
    changes = [Change(f"p{i}", "drop", 1, None, "r") for i in range(50)]

    header = report_header(changes, max_length=60)

    assert len(header) <= 60
    assert header.endswith(";more=" + str(50 - header.count("=drop(")))
    assert header.startswith("p0=drop(1);p1=drop(1)")


def test_header_empty_without_changes() -> None:
    assert report_header([Change("top_p", "pass", 0.9, 0.9, "")]) == ""


def test_dicts_are_json_ready_and_redacted() -> None:
    profiles = load_profiles()
    request = chat(temperature=1.5, stop=list("abcde"), user="alice", max_tokens=10)

    _, changes = normalize(request, "amazon.nova-pro-v1:0", "bedrock", profiles=profiles)
    dicts = changes_to_dicts(changes)

    decoded = orjson.loads(orjson.dumps(dicts))
    assert decoded == dicts
    by_param = {d["param"]: d for d in dicts}
    assert by_param["temperature"] == {
        "param": "temperature",
        "rule": "clamp",
        "before": 1.5,
        "after": 1.0,
        "into": None,
        "reason": "bedrock/nova accepts temperature from 0.0 to 1.0",
        "wire": "inferenceConfig.temperature",
        "source": "request",
    }
    assert by_param["user"]["before"] == "*"
    assert by_param["user"]["rule"] == "drop"


@pytest.mark.parametrize("limit", [10, 30, 200])
def test_header_never_exceeds_limit(limit: int) -> None:
    changes = [Change("temperature", "clamp", 1.123456789, 1.0, "r")] * 20

    assert len(report_header(changes, max_length=limit)) <= limit
