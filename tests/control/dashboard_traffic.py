"""A known mix of usage events from two instances, for the dashboard tests.

Every figure the dashboard shows for this mix can be worked out by hand: 85 requests, of
which 28 come from the team ``research``, and 4 feedback scores with a mean of 0.625.
All events start within the last 51 minutes before ``now_s``, so every preset time range
of the dashboard contains all of them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from smartflow.usage.events import (
    AttemptRecord,
    PolicySummary,
    TokenCounts,
    UsageEvent,
    new_event_id,
    utc_timestamp,
)
from smartflow.usage.feedback import new_feedback

__all__ = [
    "FEEDBACK_MEAN",
    "INSTANCES",
    "TEAM_REQUESTS",
    "TOTAL_REQUESTS",
    "batch_body",
    "late_events",
    "traffic_mix",
]

INSTANCES = {"onprem-1": "onprem", "cloud-1": "cloud"}
"""Instance name to site."""
TOTAL_REQUESTS = 85
TEAM_REQUESTS = {"finance": 52, "research": 28, None: 5}
FEEDBACK_SCORES = (1.0, 1.0, 0.5, 0.0)
FEEDBACK_MEAN = 0.625

_SPREAD_S = 3000


def _event(instance: str, index: int, now_s: float, **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "event_id": new_event_id(),
        "request_id": "req_" + uuid.uuid4().hex,
        # Spread the events over the last 50 minutes, a few seconds apart.
        "started_at": utc_timestamp(now_s - 5 - (index * 37) % _SPREAD_S),
        "instance": instance,
        "site": INSTANCES[instance],
        "dialect": "openai",
        "usage_source": "provider",
        "status": 200,
        "finish_reason": "stop",
    }
    values.update(fields)
    return UsageEvent(**values)


def _gpt4o(**fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "key_name": "app-finance",
        "team": "finance",
        "provider": "openai",
        "provider_kind": "openai",
        "deployment": "openai/gpt-4o",
        "model_requested": "gpt-4o",
        "model_served": "gpt-4o-2024-08-06",
        "tokens": TokenCounts(input=1000, output=200, cached_input=100),
        "cost_usd": "0.0043",
        "attempts": [AttemptRecord("openai/gpt-4o")],
    }
    values.update(fields)
    return values


def _claude(**fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "dialect": "anthropic",
        "key_name": "app-research",
        "team": "research",
        "provider": "anthropic",
        "provider_kind": "anthropic",
        "deployment": "anthropic/claude-sonnet-4",
        "model_requested": "claude-sonnet-4",
        "model_served": "claude-sonnet-4-20250514",
        "tokens": TokenCounts(input=2000, output=500, reasoning=100),
        "cost_usd": "0.0135",
        "attempts": [AttemptRecord("anthropic/claude-sonnet-4")],
    }
    values.update(fields)
    return values


def _gemini(**fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "key_name": "app-research",
        "team": "research",
        "provider": "gemini",
        "provider_kind": "gemini",
        "deployment": "gemini/gemini-2.5-flash",
        "model_requested": "gemini-2.5-flash",
        "model_served": "gemini-2.5-flash",
        "tokens": TokenCounts(input=500, output=100),
        "cost_usd": "0.00045",
        "cache": "miss",
        "attempts": [AttemptRecord("gemini/gemini-2.5-flash")],
    }
    values.update(fields)
    return values


def _onprem(now_s: float) -> list[UsageEvent]:
    events = []
    index = 0

    def add(count: int, make: Any) -> None:
        nonlocal index
        for i in range(count):
            events.append(_event("onprem-1", index, now_s, **make(i)))
            index += 1

    # 40 plain finance requests; every tenth one streamed.
    add(
        40,
        lambda i: _gpt4o(
            latency_ms=300.0 + 5 * i,
            stream=i % 10 == 0,
            ttft_ms=120.0 + i if i % 10 == 0 else None,
        ),
    )
    # 10 finance requests with e-mail addresses, masked before they reached OpenAI.
    email = PolicySummary(
        policies=["pii"], request_entities={"EMAIL": 2}, actions={"EMAIL": "mask"}
    )
    add(10, lambda i: _gpt4o(latency_ms=350.0, policy=email))
    # 2 finance requests blocked for an IBAN; no provider was called.
    iban = PolicySummary(
        policies=["pii-strict"],
        request_entities={"IBAN": 1},
        actions={"IBAN": "block"},
        blocked_by="pii-strict/IBAN",
    )
    add(
        2,
        lambda i: _gpt4o(
            status=400,
            error_type="policy_blocked",
            finish_reason=None,
            tokens=TokenCounts(),
            cost_usd=None,
            usage_source="none",
            attempts=[],
            latency_ms=3.0,
            policy=iban,
        ),
    )
    # 5 research responses cut at the token limit.
    add(5, lambda i: _claude(latency_ms=900.0 + 10 * i, finish_reason="length"))
    # 3 research requests that fell back and still failed upstream.
    add(
        3,
        lambda i: _claude(
            status=502,
            error_type="upstream_error",
            finish_reason=None,
            tokens=TokenCounts(),
            cost_usd=None,
            usage_source="none",
            latency_ms=1500.0,
            attempts=[
                AttemptRecord("anthropic/claude-sonnet-4", "upstream_error", 529),
                AttemptRecord("anthropic/claude-sonnet-4-eu", "upstream_error", 529),
            ],
        ),
    )
    return events


def _cloud(now_s: float) -> list[UsageEvent]:
    events = []
    # 20 research requests on Gemini, 5 of them served from the response cache.
    for i in range(20):
        fields = _gemini(latency_ms=200.0 + i)
        if i < 5:
            fields.update(cache="hit", tokens=TokenCounts(), cost_usd="0", latency_ms=4.0)
        events.append(_event("cloud-1", i, now_s, **fields))
    # 4 requests without a team, kept in the EU by a residency rule.
    for i in range(4):
        events.append(
            _event(
                "cloud-1",
                20 + i,
                now_s,
                **_gemini(key_name="app-batch", team=None, latency_ms=250.0),
            )
        )
    # 1 request to a model missing from the price catalogue.
    events.append(
        _event(
            "cloud-1",
            24,
            now_s,
            **_gemini(
                key_name="app-batch",
                team=None,
                provider="local",
                provider_kind="openai",
                deployment="local/local-llm",
                model_requested="local-llm",
                model_served="local-llm",
                cost_usd=None,
                price_missing=True,
                latency_ms=700.0,
            ),
        )
    )
    return events


def _to_json(event: UsageEvent) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(event.to_json())
    if event.key_name == "app-batch" and event.model_requested == "gemini-2.5-flash":
        # ``policy.residency`` names the residency rules that narrowed routing, as
        # ``<label>:<policy>``; the control plane counts such requests as residency routes.
        data["policy"] = {"policies": ["residency-eu"], "residency": "confidential:residency-eu"}
    return data


def _feedback(events: list[UsageEvent]) -> list[dict[str, Any]]:
    """Return feedback scores for the first requests of ``events``, by the same key."""
    scores = []
    for event, score in zip(events, FEEDBACK_SCORES, strict=False):
        feedback = new_feedback(
            request_id=event.request_id,
            score=score,
            instance=event.instance,
            site=event.site,
            key_name=event.key_name,
            team=event.team,
        )
        scores.append(orjson.loads(feedback.to_json()))
    return scores


def traffic_mix(now_s: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """Return the events and feedback scores of each instance as the JSON objects an
    instance ships."""
    now = time.time() if now_s is None else now_s
    mix = {"onprem-1": _onprem(now), "cloud-1": _cloud(now)}
    shipped = {name: [_to_json(event) for event in events] for name, events in mix.items()}
    shipped["onprem-1"].extend(_feedback(mix["onprem-1"]))
    return shipped


def late_events(count: int) -> list[dict[str, Any]]:
    """Return ``count`` more finance requests of onprem-1, started a second ago."""
    now = time.time()
    events = [_event("onprem-1", 0, now + 4, **_gpt4o(latency_ms=300.0)) for _ in range(count)]
    return [_to_json(event) for event in events]


def batch_body(instance: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the ``POST /v1/events`` body an instance's shipper sends for ``events``."""
    return {
        "schema_version": 1,
        "instance": instance,
        "site": INSTANCES[instance],
        "batch_id": new_event_id(),
        "sent_at": utc_timestamp(time.time()),
        "events": events,
    }
