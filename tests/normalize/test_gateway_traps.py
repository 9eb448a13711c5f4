"""Known parameter traps through a running gateway, judged by the openai and anthropic SDKs.

Each test sends one request through the gateway to a strict simulator on 127.0.0.1 and
checks three things: the ``x-smartflow-params`` report, the body the simulator received,
and what the caller got back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from botocore.credentials import Credentials

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.gateway.app import RunningGateway, build_app, start_gateway
from smartflow.providers.bedrock import BedrockProvider
from smartflow.sim.anthropic import AnthropicSimulator
from smartflow.sim.base import RecordedRequest, Simulator
from smartflow.sim.bedrock import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, BedrockSimulator
from smartflow.sim.openai import OpenAISimulator
from tests.conftest import PROVIDER_KEY, VIRTUAL_KEY

PARAMS_HEADER = "x-smartflow-params"
STRICT_HEADER = "x-smartflow-strict-params"
STRICT_KEY = "sk-sf-strict-0123456789abcdef"
PROMPT = "What is the capital of France?"

# Public model name: (provider, upstream model).
MODELS = {
    # temperature 0..1, temperature and top_p not both, thinking budget below max_tokens
    "claude": ("anthropic", "claude-sonnet-4-5"),
    # no native JSON schema mode: a forced tool carries the reply
    "claude-sonnet-4": ("anthropic", "claude-sonnet-4-20250514"),
    # takes an effort level, not a thinking budget
    "claude-sonnet-4-6": ("anthropic", "claude-sonnet-4-6"),
    # the alias of Opus 4, whose output limit is 32000 tokens
    "claude-opus-4-0": ("anthropic", "claude-opus-4-0"),
    # a reasoning model: no temperature
    "gpt-5": ("openai", "gpt-5"),
    # at most four stop sequences
    "gpt-4o": ("openai", "gpt-4o"),
    # neither a JSON schema mode nor a way to force a tool
    "llama": ("bedrock", "meta.llama3-1-70b-instruct-v1:0"),
}
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
OPENAI_SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "city_facts", "schema": SCHEMA, "strict": True},
}
FIVE_STOPS = ["END", "STOP", "###", "Answer:", "Done."]
# Messages API fields that anthropic SDK 2.x no longer lists as arguments of create().
SDK_LESS_FIELDS = ("temperature", "top_p", "top_k")


@dataclass
class Stack:
    url: str
    openai: OpenAISimulator
    anthropic: AnthropicSimulator
    bedrock: BedrockSimulator
    gateway: RunningGateway

    def sim(self, public_model: str) -> Simulator:
        provider = MODELS[public_model][0]
        sims: dict[str, Simulator] = {
            "openai": self.openai,
            "anthropic": self.anthropic,
            "bedrock": self.bedrock,
        }
        return sims[provider]

    def last_body(self, public_model: str) -> dict[str, Any]:
        requests = self.sim(public_model).requests
        assert requests, f"the simulator behind {public_model} received no request"
        body: dict[str, Any] = requests[-1].body
        return body


async def start_stack(*, strict: bool = False) -> Stack:
    openai_sim = OpenAISimulator(api_keys=[PROVIDER_KEY])
    anthropic_sim = AnthropicSimulator(api_keys=[PROVIDER_KEY])
    bedrock_sim = BedrockSimulator()
    openai_url, anthropic_url, bedrock_url = [
        await sim.start() for sim in (openai_sim, anthropic_sim, bedrock_sim)
    ]
    bedrock = BedrockProvider(
        "bedrock",
        region="us-east-1",
        credentials=Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY),
        endpoint_url=bedrock_url,
    )
    config = {
        "server": {"access_log": False},
        "normalization": {"strict": strict},
        "providers": {
            "openai": {
                "type": "openai",
                "base_url": openai_url + "/v1",
                "api_key_env": "TEST_PROVIDER_KEY",
            },
            "anthropic": {
                "type": "anthropic",
                "base_url": anthropic_url,
                "api_key_env": "TEST_PROVIDER_KEY",
            },
            # A placeholder: build_app uses the injected Bedrock adapter of this name.
            "bedrock": {"type": "openai", "api_key_env": "TEST_PROVIDER_KEY"},
        },
        "models": {
            public: [{"provider": provider, "model": model}]
            for public, (provider, model) in MODELS.items()
        },
        "keys": [
            {"name": "test", "sha256": hash_key(VIRTUAL_KEY)},
            {"name": "strict", "sha256": hash_key(STRICT_KEY), "strict_params": True},
        ],
        "retry": {"attempts_per_deployment": 1, "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
        "timeouts": {"connect_s": 2, "read_s": 5},
    }
    app = build_app(
        parse_config(config),
        environ={"TEST_PROVIDER_KEY": PROVIDER_KEY},
        providers={"bedrock": bedrock},
    )
    gateway = await start_gateway(app, "127.0.0.1", 0)
    return Stack(gateway.url, openai_sim, anthropic_sim, bedrock_sim, gateway)


async def stop_stack(stack: Stack) -> None:
    await stack.gateway.stop()
    for sim in (stack.openai, stack.anthropic, stack.bedrock):
        await sim.stop()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    running = await start_stack()
    try:
        yield running
    finally:
        await stop_stack(running)


# --- the two SDKs ---------------------------------------------------------------------


@dataclass
class Reply:
    """What a caller got: the report header and the reply text."""

    params: str
    text: str


def openai_client(url: str, key: str = VIRTUAL_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def anthropic_client(url: str, key: str = VIRTUAL_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0)


async def openai_send(
    url: str, model: str, *, key: str = VIRTUAL_KEY, stream: bool = False, **params: Any
) -> Reply:
    """Send one user turn with the openai SDK and return the report and the text."""
    messages: Any = [{"role": "user", "content": PROMPT}]
    async with openai_client(url, key) as client:
        raw: Any = await client.chat.completions.with_raw_response.create(
            model=model, messages=messages, stream=stream, **params
        )
        header = raw.headers.get(PARAMS_HEADER, "")
        parsed = raw.parse()
        if not stream:
            return Reply(header, parsed.choices[0].message.content or "")
        text = ""
        async for chunk in parsed:
            for choice in chunk.choices:
                text += choice.delta.content or ""
        return Reply(header, text)


async def anthropic_send(
    url: str, model: str, *, key: str = VIRTUAL_KEY, stream: bool = False, **params: Any
) -> Reply:
    """Send one user turn with the anthropic SDK and return the report and the text."""
    params.setdefault("max_tokens", 1024)
    # This SDK version has no sampling arguments any more, so they travel as extra fields.
    sampling = {name: params.pop(name) for name in SDK_LESS_FIELDS if name in params}
    if sampling:
        params["extra_body"] = {**params.get("extra_body", {}), **sampling}
    messages: Any = [{"role": "user", "content": PROMPT}]
    async with anthropic_client(url, key) as client:
        raw: Any = await client.messages.with_raw_response.create(
            model=model, messages=messages, stream=stream, **params
        )
        header = raw.headers.get(PARAMS_HEADER, "")
        parsed = await raw.parse()
        if not stream:
            return Reply(header, "".join(b.text for b in parsed.content if b.type == "text"))
        text = ""
        async for event in parsed:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
        return Reply(header, text)


async def send(ingress: str, url: str, model: str, **params: Any) -> Reply:
    if ingress == "openai":
        return await openai_send(url, model, **params)
    return await anthropic_send(url, model, **params)


def entries(header: str) -> dict[str, str]:
    """Split a report header into parameter name -> rule and values, e.g. clamp(1.5->1.0)."""
    if header == "none":
        return {}
    pairs = (entry.split("=", 1) for entry in header.split(";"))
    return {name: value for name, value in pairs}


def error_object(error: openai.APIStatusError | anthropic.APIStatusError) -> dict[str, Any]:
    """Return the error object of an SDK exception; the openai SDK has already unwrapped it."""
    body = error.body
    assert isinstance(body, dict), f"error body is not JSON: {body!r}"
    inner = body.get("error", body)
    assert isinstance(inner, dict), f"error body has no error object: {body!r}"
    return inner


def error_message(error: openai.APIStatusError | anthropic.APIStatusError) -> str:
    message = error_object(error).get("message")
    assert isinstance(message, str), f"error has no message: {error.body!r}"
    return message


def request_count(sim: Simulator) -> int:
    return len(sim.requests)


def last_request(sim: Simulator) -> RecordedRequest:
    return sim.requests[-1]


INGRESSES = ["openai", "anthropic"]
BAD_REQUEST = (openai.BadRequestError, anthropic.BadRequestError)


# --- temperature 1.5 to Claude ------------------------------------------------------


@pytest.mark.parametrize("ingress", INGRESSES)
async def test_temperature_above_range_clamped(stack: Stack, ingress: str) -> None:
    reply = await send(ingress, stack.url, "claude", temperature=1.5)

    assert entries(reply.params)["temperature"] == "clamp(1.5->1.0)"
    assert stack.last_body("claude")["temperature"] == 1.0
    assert reply.text.startswith("Hello from claude-sonnet-4-5")


@pytest.mark.parametrize("how", ["header", "key"])
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_temperature_strict_rejected(stack: Stack, ingress: str, how: str) -> None:
    before = request_count(stack.anthropic)
    key = STRICT_KEY if how == "key" else VIRTUAL_KEY
    headers = {STRICT_HEADER: "true"} if how == "header" else {}
    expected = openai.BadRequestError if ingress == "openai" else anthropic.BadRequestError

    with pytest.raises(BAD_REQUEST) as caught:
        await send(ingress, stack.url, "claude", key=key, temperature=1.5, extra_headers=headers)

    assert isinstance(caught.value, expected)
    assert caught.value.status_code == 400
    message = error_message(caught.value)
    assert "temperature" in message
    assert "0.0 to 1.0" in message
    assert request_count(stack.anthropic) == before


async def test_strict_names_missing_required_value(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_send(stack.url, "claude", extra_headers={STRICT_HEADER: "true"})

    message = error_message(caught.value)
    assert "max_tokens is not set" in message
    assert "the profile default is 4096" in message
    assert error_object(caught.value)["param"] == "max_tokens"


async def test_temperature_strict_by_config() -> None:
    strict = await start_stack(strict=True)
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            await openai_send(strict.url, "claude", temperature=1.5, max_completion_tokens=500)
        within_range = await openai_send(
            strict.url, "claude", temperature=0.5, max_completion_tokens=500
        )
    finally:
        await stop_stack(strict)

    message = error_message(caught.value)
    assert "temperature" in message
    assert "0.0 to 1.0" in message
    assert error_object(caught.value)["param"] == "temperature"
    assert within_range.params == "none"
    assert len(strict.anthropic.requests) == 1


# --- temperature with top_p to a Claude model that takes only one -------------------


@pytest.mark.parametrize("ingress", INGRESSES)
@pytest.mark.parametrize(
    ("temperature", "top_p", "kept", "dropped"),
    [
        (0.5, 0.9, "temperature", "top_p"),
        # temperature at its default has no effect, so top_p is the one that matters
        (1.0, 0.9, "top_p", "temperature"),
    ],
)
async def test_temperature_with_top_p_keeps_one(
    stack: Stack, ingress: str, temperature: float, top_p: float, kept: str, dropped: str
) -> None:
    sent = {"temperature": temperature, "top_p": top_p}

    reply = await send(ingress, stack.url, "claude", **sent)

    report = entries(reply.params)
    assert report[dropped] == f"drop({sent[dropped]})"
    assert kept not in report
    body = stack.last_body("claude")
    assert body[kept] == sent[kept]
    assert dropped not in body
    assert reply.text.startswith("Hello from claude-sonnet-4-5")


# --- temperature to an OpenAI reasoning model ---------------------------------------


async def test_temperature_dropped_for_reasoning_translated(stack: Stack) -> None:
    reply = await anthropic_send(stack.url, "gpt-5", temperature=0.7)

    assert entries(reply.params)["temperature"] == "drop(0.7)"
    body = stack.last_body("gpt-5")
    assert "temperature" not in body
    assert body["max_completion_tokens"] == 1024
    assert reply.text.startswith("Hello from gpt-5")


async def test_temperature_dropped_for_reasoning_passthrough(stack: Stack) -> None:
    reply = await openai_send(
        stack.url,
        "gpt-5",
        temperature=0.7,
        max_completion_tokens=500,
        extra_body={"x_trace_label": "trap-42"},
    )

    assert entries(reply.params)["temperature"] == "drop(0.7)"
    body = stack.last_body("gpt-5")
    assert "temperature" not in body
    assert body["x_trace_label"] == "trap-42"
    assert body["max_completion_tokens"] == 500
    assert stack.openai.unknown_fields["x_trace_label"] == 1
    assert reply.text.startswith("Hello from gpt-5")


async def test_legacy_max_tokens_to_reasoning_passthrough(stack: Stack) -> None:
    reply = await openai_send(stack.url, "gpt-5", max_tokens=500)

    assert reply.text.startswith("Hello from gpt-5")
    body = stack.last_body("gpt-5")
    assert body["max_completion_tokens"] == 500
    assert "max_tokens" not in body


# --- reasoning effort high to Claude with a small max_tokens -------------------------


@pytest.mark.parametrize("ingress", INGRESSES)
async def test_effort_high_small_max_tokens(stack: Stack, ingress: str) -> None:
    if ingress == "openai":
        params: dict[str, Any] = {"reasoning_effort": "high", "max_completion_tokens": 1500}
    else:
        params = {"output_config": {"effort": "high"}, "max_tokens": 1500}

    reply = await send(ingress, stack.url, "claude", **params)

    report = entries(reply.params)
    assert report["reasoning_effort"] == "derive(high->thinking_budget:16384)"
    assert report["thinking_budget"] == "clamp(16384->1024)"
    assert report["max_tokens"] == "derive(1500->2048)"
    body = stack.last_body("claude")
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["max_tokens"] == 2048
    assert "effort" not in body.get("output_config", {})
    assert reply.text.startswith("Hello from claude-sonnet-4-5")


# --- five stop sequences to a provider that takes four ------------------------------


@pytest.mark.parametrize("ingress", INGRESSES)
async def test_five_stops_truncated_to_four(stack: Stack, ingress: str) -> None:
    if ingress == "openai":
        params: dict[str, Any] = {"stop": FIVE_STOPS}
    else:
        params = {"stop_sequences": FIVE_STOPS}

    reply = await send(ingress, stack.url, "gpt-4o", **params)

    assert entries(reply.params)["stop"] == "truncate(5->4)"
    assert stack.last_body("gpt-4o")["stop"] == FIVE_STOPS[:4]
    assert reply.text.startswith("Hello from gpt-4o")


# --- a JSON schema to a provider without a JSON schema mode -------------------------


def schema_params(ingress: str) -> dict[str, Any]:
    if ingress == "openai":
        return {"response_format": OPENAI_SCHEMA_FORMAT}
    return {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_json_schema_through_forced_tool(stack: Stack, ingress: str, stream: bool) -> None:
    reply = await send(
        ingress, stack.url, "claude-sonnet-4", stream=stream, **schema_params(ingress)
    )

    report = entries(reply.params)
    assert report["response_format"] == "derive(json_schema->tool:json_output)"
    assert report["tool_choice"] == "derive(->tool:json_output)"
    assert json.loads(reply.text) == {"city": "sample", "population": 1}
    body = stack.last_body("claude-sonnet-4")
    assert [tool["name"] for tool in body["tools"]] == ["json_output"]
    assert body["tools"][0]["input_schema"] == SCHEMA
    assert body["tool_choice"] == {"type": "tool", "name": "json_output"}
    assert "output_config" not in body


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_json_schema_without_equivalent_rejected(
    stack: Stack, ingress: str, stream: bool
) -> None:
    before = request_count(stack.bedrock)
    expected = openai.BadRequestError if ingress == "openai" else anthropic.BadRequestError

    with pytest.raises(BAD_REQUEST) as caught:
        await send(ingress, stack.url, "llama", stream=stream, **schema_params(ingress))

    assert isinstance(caught.value, expected)
    assert caught.value.status_code == 400
    message = error_message(caught.value)
    assert "response_format" in message
    assert "json_schema" in message
    assert request_count(stack.bedrock) == before


# --- limits of a model reached through its alias -------------------------------------


async def test_opus_4_alias_gets_opus_4_limit(stack: Stack) -> None:
    # The anthropic SDK refuses a whole response with this max_tokens, so the openai SDK sends it.
    reply = await openai_send(stack.url, "claude-opus-4-0", max_completion_tokens=40_000)

    assert entries(reply.params)["max_tokens"] == "clamp(40000->32000)"
    assert stack.last_body("claude-opus-4-0")["max_tokens"] == 32_000
    assert reply.text.startswith("Hello from claude-opus-4-20250514")


async def test_budget_to_effort_passthrough(stack: Stack) -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}

    reply = await anthropic_send(stack.url, "claude-sonnet-4-6", max_tokens=4000, thinking=thinking)

    assert entries(reply.params)["thinking_budget"] == "derive(2048->reasoning_effort:low)"
    body = stack.last_body("claude-sonnet-4-6")
    assert body["thinking"] == {"type": "adaptive"}
    assert body.get("output_config", {}).get("effort") == "low"


# --- parallel tool calls where no tool may be called ------------------------------


async def test_parallel_dropped_with_tool_choice_none(stack: Stack) -> None:
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }

    reply = await openai_send(
        stack.url, "claude", tools=[tool], tool_choice="none", parallel_tool_calls=False
    )

    assert entries(reply.params)["parallel_tool_calls"] == "drop(false)"
    assert stack.last_body("claude")["tool_choice"] == {"type": "none"}
    assert reply.text.startswith("Hello from claude-sonnet-4-5")


# --- fields with no canonical form -------------------------------------------------------


async def test_untranslatable_field_reported_when_dropped(stack: Stack) -> None:
    bias = {"1234": -100}
    reply = await openai_send(stack.url, "claude", max_tokens=50, logit_bias=bias)
    assert entries(reply.params)["logit_bias"] == "drop(set)"
    assert "logit_bias" not in stack.last_body("claude")
    # The same field passes through untouched to a provider of the caller's dialect.
    reply = await openai_send(stack.url, "gpt-4o", logit_bias=bias)
    assert "logit_bias" not in entries(reply.params)
    assert stack.last_body("gpt-4o")["logit_bias"] == bias


async def test_untranslatable_field_strict_rejected(stack: Stack) -> None:
    before = request_count(stack.anthropic)
    headers = {STRICT_HEADER: "true"}
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_send(
            stack.url, "claude", max_tokens=50, logit_bias={"1": 1}, extra_headers=headers
        )
    assert error_object(caught.value)["param"] == "logit_bias"
    assert "no equivalent on anthropic" in error_message(caught.value)
    assert request_count(stack.anthropic) == before
