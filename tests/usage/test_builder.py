"""UsageBuilder: events on success, on errors and on streams cut by the caller."""

from __future__ import annotations

import dataclasses
from collections import Counter
from decimal import Decimal

import orjson

from smartflow.auth.keys import Caller
from smartflow.core.errors import UpstreamTimeout
from smartflow.core.stream import (
    StreamEnd,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    UsageUpdate,
)
from smartflow.core.types import ChatRequest, ChatResponse, Message, TextPart, Usage
from smartflow.gateway.upstream import Attempt
from smartflow.normalize.report import Change
from smartflow.policy.decision import Decision, RuleHit
from smartflow.providers.anthropic import AnthropicProvider
from smartflow.providers.base import Deployment, Secret
from smartflow.providers.openai import AzureOpenAIProvider, OpenAIProvider
from smartflow.usage.builder import UsageBuilder
from smartflow.usage.prices import PriceCatalog

# Adapters are only read for their names and kinds here; nothing is sent to these URLs.
OPENAI = OpenAIProvider("openai-main", api_key=Secret("fake"), base_url="http://127.0.0.1:9/v1")
ANTHROPIC = AnthropicProvider("claude", api_key=Secret("fake"), base_url="http://127.0.0.1:9")
PRICES = PriceCatalog.from_dict(
    {
        "providers": {
            "openai": {
                "models": {
                    "gpt-4o": {
                        "input": 2.5,
                        "output": 10,
                        "cached_input": 1.25,
                        "as_of": "2026-07-24",
                    }
                }
            },
            "anthropic": {
                "models": {
                    "claude-sonnet-4-5": {
                        "input": 3,
                        "output": 15,
                        "cached_input": 0.3,
                        "cache_write": 3.75,
                        "as_of": "2026-07-24",
                    }
                }
            },
            "azure_openai": {
                "models": {"gpt-4o-mini": {"input": 0.15, "output": 0.6, "as_of": "2026-07-24"}}
            },
        }
    }
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _builder(clock: FakeClock | None = None, dialect: str = "openai") -> UsageBuilder:
    return UsageBuilder(
        request_id="req_abc",
        dialect=dialect,
        instance="gw-1",
        site="eu-west",
        clock=clock or FakeClock(),
        wall_clock=lambda: 1_700_000_000.0,
    )


def _request(model: str = "gpt-4o", stream: bool = False) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message("user", [TextPart("Hello")])], stream=stream)


def test_complete_response_event() -> None:
    clock = FakeClock()
    builder = _builder(clock)
    builder.set_caller(Caller("billing", "finance", "bot"))
    builder.set_request(_request())
    builder.set_deployment(Deployment("gpt-4o", OPENAI, "gpt-4o"))
    builder.set_attempts([Attempt("openai-main/gpt-4o")])
    builder.record_response(
        ChatResponse(
            id="c1",
            model="gpt-4o-2024-08-06",
            finish_reason="stop",
            usage=Usage(input_tokens=1000, output_tokens=200, cached_input_tokens=400),
        )
    )
    assert builder.has_usage
    clock.now += 0.25
    event = builder.finish(200, PRICES)

    assert event.key_name == "billing"
    assert event.team == "finance"
    assert event.user == "bot"
    assert event.started_at == "2023-11-14T22:13:20.000Z"
    assert event.provider == "openai-main"
    assert event.provider_kind == "openai"
    assert event.deployment == "openai-main/gpt-4o"
    assert event.model_requested == "gpt-4o"
    assert event.model_served == "gpt-4o-2024-08-06"
    assert event.latency_ms == 250.0
    assert event.ttft_ms is None
    assert event.usage_source == "provider"
    assert (event.tokens.input, event.tokens.output, event.tokens.cached_input) == (1000, 200, 400)
    # The served snapshot has no entry, so the deployment's model prices it.
    expected = (600 * Decimal("2.5") + 400 * Decimal("1.25") + 200 * 10) / 10**6
    assert Decimal(event.cost_usd or "nan") == expected
    assert event.price_missing is False
    assert event.price_as_of == "2026-07-24"
    assert event.finish_reason == "stop"
    assert event.status == 200
    assert event.error_type is None


def test_stream_to_the_end_uses_provider_usage() -> None:
    clock = FakeClock()
    builder = _builder(clock, dialect="anthropic")
    builder.set_request(_request("claude-sonnet-4-5", stream=True))
    builder.set_deployment(Deployment("claude-sonnet-4-5", ANTHROPIC, "claude-sonnet-4-5"))
    clock.now += 0.1
    builder.mark_first_byte()
    events = [
        StreamStart("m1", "claude-sonnet-4-5", usage=Usage(input_tokens=50, output_tokens=1)),
        TextDelta("Hello there"),
        ToolCallStart(0, "t1", "lookup"),
        ToolCallDelta(0, '{"q": 1}'),
        UsageUpdate(Usage(input_tokens=50, output_tokens=30)),
        StreamEnd("tool_calls", usage=Usage(input_tokens=50, output_tokens=30)),
    ]
    for item in events:
        builder.observe(item)
    clock.now += 0.4
    builder.mark_first_byte()  # only the first call counts
    event = builder.finish(200, PRICES)

    assert event.stream is True
    assert event.ttft_ms == 100.0
    assert event.latency_ms == 500.0
    assert event.usage_source == "provider"
    assert (event.tokens.input, event.tokens.output) == (50, 30)
    assert event.finish_reason == "tool_calls"
    assert Decimal(event.cost_usd or "nan") == (50 * 3 + 30 * 15) / Decimal(10**6)


def test_stream_cut_by_client_keeps_partial_usage() -> None:
    builder = _builder(dialect="anthropic")
    builder.set_request(_request("claude-sonnet-4-5", stream=True))
    builder.set_deployment(Deployment("claude-sonnet-4-5", ANTHROPIC, "claude-sonnet-4-5"))
    builder.observe(
        StreamStart("m1", "claude-sonnet-4-5", usage=Usage(input_tokens=80, output_tokens=1))
    )
    builder.observe(TextDelta("x" * 41))  # 41 characters: 11 tokens at 4 characters each
    builder.mark_client_disconnected()
    event = builder.finish(200, PRICES)

    assert event.client_disconnected is True
    assert event.status == 499
    assert event.error_type == "client_disconnected"
    assert event.usage_source == "partial"
    assert event.tokens.input == 80
    assert event.tokens.output == 11
    assert event.finish_reason is None
    assert event.cost_usd is not None


def test_stream_without_usage_is_estimated() -> None:
    # An OpenAI stream whose caller did not ask for usage ends without any count.
    builder = _builder()
    builder.set_request(_request(stream=True), estimated_input_tokens=12)
    builder.set_deployment(Deployment("gpt-4o", OPENAI, "gpt-4o"))
    builder.observe(StreamStart("c1", "gpt-4o"))
    builder.observe(TextDelta("abcdefgh"))
    builder.observe(StreamEnd("stop"))
    event = builder.finish(200, PRICES)

    assert event.usage_source == "estimated"
    assert (event.tokens.input, event.tokens.output) == (12, 2)
    assert event.cost_usd is not None


def test_upstream_failure_has_no_usage() -> None:
    builder = _builder()
    builder.set_request(_request())
    builder.set_attempts(
        [
            Attempt("openai-main/gpt-4o", "upstream_timeout", None),
            Attempt("openai-main/gpt-4o", "upstream_timeout", None),
            Attempt("azure/gpt-4o", "upstream_overloaded", 529),
        ]
    )
    builder.record_error(UpstreamTimeout("timed out", provider="azure"))
    builder.record_error("later error")  # the first error recorded is kept
    assert not builder.has_usage
    event = builder.finish(504, PRICES)

    assert event.usage_source == "none"
    assert event.tokens.input == 0
    assert event.cost_usd is None
    assert event.price_missing is False
    assert event.error_type == "upstream_timeout"
    assert event.fallbacks == 1
    assert [a.status for a in event.attempts] == [None, None, 529]


def test_unknown_price_is_flagged_not_guessed() -> None:
    builder = _builder()
    builder.set_request(_request("gpt-4o"))
    builder.set_deployment(Deployment("gpt-4o", OPENAI, "gpt-4o-custom-finetune"))
    builder.record_response(ChatResponse("c1", "gpt-4o-custom-finetune", usage=Usage(10, 10)))
    event = builder.finish(200, PRICES)

    assert event.cost_usd is None
    assert event.price_missing is True
    assert event.price_as_of is None


def test_azure_is_priced_by_base_model() -> None:
    azure = AzureOpenAIProvider(
        "azure", api_key=Secret("fake"), base_url="http://127.0.0.1:9", api_version="2024-10-21"
    )
    builder = _builder()
    builder.set_request(_request("mini"))
    builder.set_deployment(
        Deployment("mini", azure, "prod-mini-deployment", base_model="gpt-4o-mini")
    )
    builder.record_response(ChatResponse("c1", "", usage=Usage(1_000_000, 0)))
    event = builder.finish(200, PRICES)

    assert event.model_served == "prod-mini-deployment"
    assert event.cost_usd == "0.15"


def test_finish_is_idempotent() -> None:
    clock = FakeClock()
    builder = _builder(clock)
    first = builder.finish(200, PRICES)
    clock.now += 5
    second = builder.finish(500, PRICES)
    assert second is first
    assert second.status == 200
    assert builder.finished


def test_policy_summary_holds_counts_not_values() -> None:
    decision = Decision(
        policies=("pii",),
        request_entities=Counter({"EMAIL": 2, "PHONE": 1}),
        actions={"EMAIL": "mask"},
        labels={"confidential"},
    )
    decision.record_rule(RuleHit("pii", "no-secrets", "deny_list", "request", 3, True))
    builder = _builder()
    builder.set_policy(decision)
    builder.set_normalization(
        [
            Change("temperature", "clamp", 3.0, 2.0, "max 2"),
            Change("user", "drop", "alice@example.com", None, "not supported"),
        ]
    )
    event = builder.finish(200)
    assert event.policy is not None
    assert event.policy.request_entities == {"EMAIL": 2, "PHONE": 1}
    assert event.policy.actions == {"EMAIL": "mask"}
    assert event.policy.rules == ["pii/no-secrets"]
    assert event.policy.labels == ["confidential"]
    assert event.normalization[0]["after"] == 2.0
    assert event.normalization[1]["before"] == "*"
    assert b"alice" not in orjson.dumps(event)


def test_caller_supplied_model_name_is_truncated() -> None:
    builder = _builder()
    builder.set_request(_request("m" * 5000))
    event = builder.finish(404)
    assert event.model_requested == "m" * 200


def test_usage_copy_keeps_every_field() -> None:
    values = {field.name: index + 1 for index, field in enumerate(dataclasses.fields(Usage))}
    builder = UsageBuilder(request_id="req_copy", dialect="openai", instance="gw", site="local")
    reported = Usage(**values)
    builder.record_usage(reported, final=True)
    reported.input_tokens = 0  # a later change by the decoder must not reach the event
    event = builder.finish(200)
    assert event.usage_source == "provider"
    assert dataclasses.asdict(event.tokens) == {
        "input": values["input_tokens"],
        "output": values["output_tokens"],
        "cached_input": values["cached_input_tokens"],
        "cache_write": values["cache_write_tokens"],
        "reasoning": values["reasoning_tokens"],
    }
    assert set(values) == {
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    }, "Usage has a new field: copy it in usage.builder._copy_usage"


def test_later_normalization_and_attempts_replace_earlier() -> None:
    builder = _builder()
    builder.set_normalization([Change("temperature", "clamp", 3.0, 2.0, "max 2")])
    builder.set_normalization([])
    builder.set_attempts([Attempt("openai-main/gpt-4o")])
    builder.set_attempts([])
    event = builder.finish(200)
    assert event.normalization == []
    assert event.attempts == []


def test_finish_callbacks_run_once() -> None:
    calls: list[str] = []
    builder = _builder()
    builder.on_finish(lambda: calls.append("first"))
    builder.on_finish(lambda: calls.append("second"))
    builder.finish(200)
    builder.finish(200)
    assert calls == ["first", "second"]


def test_builder_takes_positional_arguments() -> None:
    builder = UsageBuilder("req_pos", "anthropic", "gw-2", "us", "embeddings")
    event = builder.finish(200)
    assert (event.request_id, event.dialect, event.instance, event.site) == (
        "req_pos",
        "anthropic",
        "gw-2",
        "us",
    )
    assert event.operation == "embeddings"
