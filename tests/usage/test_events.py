"""Usage events: UUIDv7 ids, the JSON form and its schema version."""

from __future__ import annotations

import dataclasses
import datetime
import time
import uuid

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartflow.usage.events import (
    SCHEMA_VERSION,
    AttemptRecord,
    PolicySummary,
    TokenCounts,
    UsageEvent,
    new_event_id,
    started_event,
    utc_timestamp,
)


def _event(**overrides: object) -> UsageEvent:
    values: dict[str, object] = {
        "event_id": new_event_id(),
        "request_id": "req_1",
        "started_at": utc_timestamp(0),
        "instance": "gw-1",
        "site": "eu",
        "dialect": "openai",
    }
    values.update(overrides)
    return UsageEvent(**values)  # type: ignore[arg-type]


def test_event_id_is_uuid7() -> None:
    before_ms = time.time_ns() // 1_000_000
    parsed = uuid.UUID(new_event_id())
    after_ms = time.time_ns() // 1_000_000
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    timestamp_ms = parsed.int >> 80
    assert before_ms <= timestamp_ms <= after_ms + 1


def test_event_ids_sort_in_creation_order() -> None:
    # Many of 20,000 ids share a millisecond, which exercises the counter within it.
    ids = [new_event_id() for _ in range(20_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_timestamp_is_rfc3339_utc() -> None:
    assert utc_timestamp(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"


def test_event_round_trips_through_json() -> None:
    event = _event(
        tokens=TokenCounts(input=120, output=30, cached_input=100, cache_write=0, reasoning=10),
        attempts=[
            AttemptRecord("openai/gpt-4o", "upstream_overloaded", 529),
            AttemptRecord("azure/x"),
        ],
        policy=PolicySummary(policies=["pii"], request_entities={"EMAIL": 2}),
        normalization=[{"param": "temperature", "rule": "clamp", "before": 3, "after": 2}],
        cost_usd="0.00123",
    )
    raw = event.to_json()
    data = orjson.loads(raw)
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["tokens"]["cached_input"] == 100
    assert data["policy"]["request_entities"] == {"EMAIL": 2}
    assert UsageEvent.from_json(raw) == event


def test_to_json_matches_dataclass_output() -> None:
    # to_json writes a dict of the fields. A field added to UsageEvent but not to that
    # dict makes the two outputs differ.
    event = _event(
        entry_instance="gw-2",
        entry_site="us",
        key_name="k",
        team="t",
        user="u",
        identity="h",
        provider="openai",
        provider_kind="openai",
        deployment="openai/gpt-4o",
        model_requested="gpt-4o",
        model_served="gpt-4o-2024-08-06",
        tokens=TokenCounts(input=5, output=4, cached_input=3, cache_write=2, reasoning=1),
        usage_source="provider",
        cost_usd="0.1",
        price_missing=True,
        price_as_of="2026-01-01",
        price_version="builtin",
        latency_ms=1.5,
        ttft_ms=0.5,
        stream=True,
        cache="hit",
        attempts=[AttemptRecord("openai/gpt-4o", "upstream_timeout", 504)],
        normalization=[{"param": "temperature", "rule": "clamp"}],
        policy=PolicySummary(policies=["pii"], blocked_by="pii"),
        finish_reason="length",
        status=499,
        error_type="client_disconnected",
        client_disconnected=True,
    )
    # to_json fills a copy of a dict whose values are None, so a field it does not set is
    # only caught here if the event sets that field to something else.
    assert [f.name for f in dataclasses.fields(event) if getattr(event, f.name) is None] == []
    assert event.to_json() == orjson.dumps(event)
    plain = _event()
    assert plain.to_json() == orjson.dumps(plain)


def test_newer_schema_version_is_rejected() -> None:
    data = orjson.loads(_event().to_json())
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="schema_version"):
        UsageEvent.from_dict(data)


def test_unknown_field_is_rejected() -> None:
    data = orjson.loads(_event().to_json())
    data["prompt"] = "secret text"
    with pytest.raises(ValueError, match="Invalid usage event"):
        UsageEvent.from_dict(data)


def test_unknown_token_field_is_rejected() -> None:
    data = orjson.loads(_event().to_json())
    data["tokens"]["audio"] = 5
    with pytest.raises(ValueError, match="Invalid usage event"):
        UsageEvent.from_dict(data)


@pytest.mark.parametrize(
    ("deployments", "expected"),
    [
        ([], 0),
        (["a"], 0),
        (["a", "a"], 0),
        (["a", "a", "b"], 1),
        (["a", "b", "b", "c"], 2),
    ],
)
def test_fallbacks_count_deployment_changes(deployments: list[str], expected: int) -> None:
    event = _event(attempts=[AttemptRecord(d, "upstream_error", 500) for d in deployments])
    assert event.fallbacks == expected


def test_started_event_equals_the_constructor() -> None:
    started = started_event(
        "e-1", "req_1", "2026-01-02T03:04:05.678Z", "gw", "eu", "chat", "openai"
    )
    built = UsageEvent(
        event_id="e-1",
        request_id="req_1",
        started_at="2026-01-02T03:04:05.678Z",
        instance="gw",
        site="eu",
        operation="chat",
        dialect="openai",
    )
    # Field by field, so that a field started_event leaves unset fails here by name.
    for item in dataclasses.fields(UsageEvent):
        assert getattr(started, item.name) == getattr(built, item.name), item.name
    assert started.to_json() == built.to_json()
    # The mutable defaults are the event's own.
    assert started.tokens is not built.tokens
    assert started_event("e-2", "r", "t", "gw", "eu", "chat", "openai").attempts is not (
        started.attempts
    )


@given(st.floats(min_value=0, max_value=2**34, allow_nan=False))
def test_timestamp_matches_datetime(epoch_seconds: float) -> None:
    moment = datetime.datetime.fromtimestamp(epoch_seconds, tz=datetime.UTC)
    expected = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    assert utc_timestamp(epoch_seconds) == expected


def test_timestamp_rounds_to_microseconds_first() -> None:
    # 0.9999996 s rounds up to the next second, as datetime.fromtimestamp does.
    assert utc_timestamp(1_700_000_000.9999996) == "2023-11-14T22:13:21.000Z"
    assert utc_timestamp(-0.5) == "1969-12-31T23:59:59.500Z"
