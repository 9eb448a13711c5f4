"""Cohere Chat v2 behind the gateway, judged by the openai and anthropic SDKs.

Every request goes to a CohereSimulator (or a scripted server) on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.core.errors import MalformedUpstreamResponse, UpstreamHTTPError, UpstreamTimeout
from smartflow.dialects.cohere.responses import parse_response
from smartflow.dialects.cohere.streaming import StreamDecoder
from smartflow.gateway.app import RunningGateway, build_app, start_gateway
from smartflow.providers.base import Provider, Secret
from smartflow.providers.cohere import CohereProvider
from smartflow.sim.base import Fault
from smartflow.sim.cohere import CohereSimulator
from smartflow.sim.script import count_tokens
from tests.conftest import VIRTUAL_KEY
from tests.gateway.clients import (
    TIME_TOOL,
    WEATHER_TOOL,
    anthropic_chat,
    anthropic_client,
    anthropic_tools,
    openai_chat,
    openai_client,
    openai_tools,
)

COHERE_KEY = "cohere-test-key"
PROMPT = "Good morning, gateway"
SYSTEM = "Be brief."
# A 1x1 transparent PNG.
PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)

# Public model name: (provider, upstream model).
MODELS = {
    "command-a": ("cohere", "command-a-03-2025"),
    "command-a-vision": ("cohere", "command-a-vision-07-2025"),
    "command-a-reasoning": ("cohere", "command-a-reasoning-08-2025"),
}
INGRESSES = ["openai", "anthropic"]
STREAMING = [False, True]


@dataclass
class CohereStack:
    url: str
    sim: CohereSimulator
    gateway: RunningGateway


def gateway_config(providers: dict[str, Provider], models: dict[str, tuple[str, str]]) -> Any:
    return parse_config(
        {
            "server": {"access_log": False},
            # The config schema has no Cohere provider type yet. These entries only
            # name the providers; build_app uses the injected adapters instead.
            "providers": {
                name: {"type": "openai", "api_key_env": "UNUSED_PROVIDER_KEY"} for name in providers
            },
            "models": {
                public: [{"provider": provider, "model": model}]
                for public, (provider, model) in models.items()
            },
            "keys": [{"name": "test", "sha256": hash_key(VIRTUAL_KEY)}],
            "retry": {
                "attempts_per_deployment": 2,
                "backoff_initial_s": 0.01,
                "backoff_max_s": 0.05,
                "max_retry_after_s": 0.5,
            },
            "timeouts": {"connect_s": 2, "read_s": 5},
        }
    )


async def start_gateway_for(
    providers: dict[str, Provider], models: dict[str, tuple[str, str]]
) -> RunningGateway:
    app = build_app(gateway_config(providers, models), environ={}, providers=providers)
    return await start_gateway(app, "127.0.0.1", 0)


@pytest.fixture
async def cohere() -> AsyncIterator[CohereStack]:
    sim = CohereSimulator(api_keys=[COHERE_KEY])
    url = await sim.start()
    providers: dict[str, Provider] = {
        "cohere": CohereProvider("cohere", api_key=Secret(COHERE_KEY), base_url=url)
    }
    gateway = await start_gateway_for(providers, MODELS)
    try:
        yield CohereStack(gateway.url, sim, gateway)
    finally:
        await gateway.stop()
        await sim.stop()


def _ids(values: list[Any], name: str) -> list[str]:
    return [f"{name}={v}" for v in values]


# --- plain text ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_plain_text(cohere: CohereStack, ingress: str, stream: bool) -> None:
    if ingress == "openai":
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
        outcome = await openai_chat(cohere.url, "command-a", messages, stream=stream)
    else:
        messages = [{"role": "user", "content": PROMPT}]
        outcome = await anthropic_chat(
            cohere.url, "command-a", messages, stream=stream, system=SYSTEM
        )

    assert outcome.text == f"Hello from command-a-03-2025. You said: {PROMPT}"
    # Cohere's responses do not name the model, so the gateway names the deployment's.
    assert outcome.model == "command-a-03-2025"
    assert outcome.tool_calls == []
    assert outcome.finish == "stop"
    # Billed units: the simulator bills the prompt text without Cohere's template.
    assert outcome.input_tokens == count_tokens(PROMPT) + count_tokens(SYSTEM)
    assert outcome.output_tokens == count_tokens(outcome.text)

    received = cohere.sim.requests[-1]
    assert received.path == "/v2/chat"
    assert received.headers["authorization"] == (
        "sha256:" + hashlib.sha256(f"Bearer {COHERE_KEY}".encode()).hexdigest()
    )
    assert received.body["model"] == "command-a-03-2025"
    assert received.body["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROMPT},
    ]
    assert received.body.get("stream", False) is stream


# --- tool calls ------------------------------------------------------------------------


async def _tool_round_trip(url: str, ingress: str, stream: bool, parallel: bool) -> tuple[Any, Any]:
    prompt = "Call the weather tool for Paris" + (
        " and the time tool, in parallel" if parallel else ""
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    if ingress == "openai":
        tools = openai_tools([WEATHER_TOOL, TIME_TOOL])
        first = await openai_chat(url, "command-a", messages, stream=stream, tools=tools)
        calls = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, n, a in first.tool_calls
        ]
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        for number, (call_id, _, _) in enumerate(first.tool_calls):
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": f"result-{number}"}
            )
        second = await openai_chat(url, "command-a", messages, stream=stream, tools=tools)
        return first, second
    tools = anthropic_tools([WEATHER_TOOL, TIME_TOOL])
    first = await anthropic_chat(url, "command-a", messages, stream=stream, tools=tools)
    uses = [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in first.tool_calls]
    results = [
        {"type": "tool_result", "tool_use_id": call_id, "content": f"result-{number}"}
        for number, (call_id, _, _) in enumerate(first.tool_calls)
    ]
    messages += [{"role": "assistant", "content": uses}, {"role": "user", "content": results}]
    second = await anthropic_chat(url, "command-a", messages, stream=stream, tools=tools)
    return first, second


@pytest.mark.parametrize("parallel", [False, True], ids=["one-call", "two-calls"])
@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_tool_round_trip(
    cohere: CohereStack, ingress: str, stream: bool, parallel: bool
) -> None:
    first, second = await _tool_round_trip(cohere.url, ingress, stream, parallel)

    expected_names = ["get_weather", "get_time"] if parallel else ["get_weather"]
    assert [name for _, name, _ in first.tool_calls] == expected_names
    assert first.tool_calls[0][2] == {"location": "sample", "unit": "celsius"}
    if parallel:
        assert first.tool_calls[1][2] == {"city": "sample"}
    ids = [call_id for call_id, _, _ in first.tool_calls]
    # The simulator names its call ids after the function, as Cohere does.
    assert [call_id.rsplit("_", 1)[0] for call_id in ids] == expected_names
    assert len(set(ids)) == len(ids)
    assert first.finish == "tool_calls"
    assert first.text == ""
    assert first.output_tokens > 0
    assert first.input_tokens > 0

    replayed = cohere.sim.requests[-1].body["messages"]
    assistant = next(m for m in replayed if m["role"] == "assistant")
    assert [c["id"] for c in assistant["tool_calls"]] == ids
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == expected_names
    results = [m for m in replayed if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in results] == [
        (call_id, f"result-{n}") for n, call_id in enumerate(ids)
    ]

    expected_results = "; ".join(f"result-{n}" for n in range(len(expected_names)))
    assert second.text == f"Tool results received: {expected_results}"
    assert second.tool_calls == []
    assert second.finish == "stop"
    assert second.output_tokens == count_tokens(second.text)


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
async def test_tool_plan_round_trip_as_thinking(cohere: CohereStack, stream: bool) -> None:
    client = anthropic_client(cohere.url)
    tools: Any = anthropic_tools([WEATHER_TOOL])
    messages: Any = [{"role": "user", "content": "Call the weather tool for Paris"}]
    params: Any = {"model": "command-a", "max_tokens": 500, "tools": tools}
    if stream:
        async with client.messages.stream(messages=messages, **params) as events:
            first = await events.get_final_message()
    else:
        first = await client.messages.create(messages=messages, **params)

    assert [block.type for block in first.content] == ["thinking", "tool_use"]
    plan = first.content[0]
    assert plan.type == "thinking"
    assert plan.thinking == "I will use the get_weather tool to answer the request."
    call = first.content[1]
    assert call.type == "tool_use"

    messages.append(
        {"role": "assistant", "content": [block.model_dump() for block in first.content]}
    )
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}
    messages.append({"role": "user", "content": [result]})
    second = await client.messages.create(messages=messages, **params)

    assert second.content[-1].type == "text"
    assert second.content[-1].text == "Tool results received: sunny"
    assistant = cohere.sim.requests[-1].body["messages"][1]
    assert assistant["tool_plan"] == plan.thinking


async def test_named_tool_choice_offers_only_that_tool(cohere: CohereStack) -> None:
    response = await openai_client(cohere.url).chat.completions.create(
        model="command-a",
        messages=[{"role": "user", "content": "What now?"}],
        tools=openai_tools([WEATHER_TOOL, TIME_TOOL]),
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )

    calls = response.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_time"]
    body = cohere.sim.requests[-1].body
    assert [t["function"]["name"] for t in body["tools"]] == ["get_time"]
    assert body["tool_choice"] == "REQUIRED"


# --- images ----------------------------------------------------------------------------


def _image_messages(ingress: str, question: str) -> list[dict[str, Any]]:
    if ingress == "openai":
        image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}
        return [{"role": "user", "content": [{"type": "text", "text": question}, image]}]
    source = {"type": "base64", "media_type": "image/png", "data": PIXEL}
    content = [{"type": "text", "text": question}, {"type": "image", "source": source}]
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_image_input(cohere: CohereStack, ingress: str, stream: bool) -> None:
    question = "What is in this picture?"
    messages = _image_messages(ingress, question)
    chat = openai_chat if ingress == "openai" else anthropic_chat
    outcome = await chat(cohere.url, "command-a-vision", messages, stream=stream)

    expected = f"Hello from command-a-vision-07-2025. You said: {question} I see 1 image(s)."
    assert outcome.text == expected
    assert outcome.finish == "stop"
    assert outcome.tool_calls == []
    # The simulator bills an image as three input tokens.
    assert outcome.input_tokens == count_tokens(question) + 3
    assert outcome.output_tokens == count_tokens(outcome.text)
    content = cohere.sim.requests[-1].body["messages"][0]["content"]
    assert content[1] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{PIXEL}"},
    }


@pytest.mark.parametrize("ingress", INGRESSES)
async def test_image_to_text_model_is_a_400(cohere: CohereStack, ingress: str) -> None:
    messages: Any = _image_messages(ingress, "What is in this picture?")
    if ingress == "openai":
        with pytest.raises(openai.BadRequestError) as openai_caught:
            await openai_client(cohere.url).chat.completions.create(
                model="command-a", messages=messages
            )
        assert openai_caught.value.status_code == 400
        message = str(openai_caught.value)
    else:
        with pytest.raises(anthropic.BadRequestError) as anthropic_caught:
            await anthropic_client(cohere.url).messages.create(
                model="command-a", max_tokens=50, messages=messages
            )
        assert anthropic_caught.value.status_code == 400
        message = str(anthropic_caught.value)
    assert "model 'command-a-03-2025' does not support image inputs" in message


# --- generation settings ---------------------------------------------------------------


async def test_json_schema_and_sampling(cohere: CohereStack) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    response = await openai_client(cohere.url).chat.completions.create(
        model="command-a",
        messages=[{"role": "user", "content": "Largest city?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        temperature=0.2,
        top_p=1.0,
        max_tokens=200,
        stop=["END"],
        seed=7,
    )

    assert json.loads(response.choices[0].message.content or "") == {
        "city": "sample",
        "population": 1,
    }
    body = cohere.sim.requests[-1].body
    assert body["response_format"] == {"type": "json_object", "json_schema": schema}
    assert body["temperature"] == 0.2
    # Cohere takes p up to 0.99, so 1.0 (no cut-off) is sent as the upper bound.
    assert body["p"] == 0.99
    assert body["max_tokens"] == 200
    assert body["stop_sequences"] == ["END"]
    assert body["seed"] == 7


async def test_several_choices_are_rejected(cohere: CohereStack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client(cohere.url).chat.completions.create(
            model="command-a", messages=[{"role": "user", "content": PROMPT}], n=2
        )
    assert "does not accept n" in str(caught.value)
    assert len(cohere.sim.requests) == 0


async def test_max_tokens_gives_length(cohere: CohereStack) -> None:
    message = await anthropic_client(cohere.url).messages.create(
        model="command-a", max_tokens=3, messages=[{"role": "user", "content": PROMPT}]
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
async def test_reasoning_model_thinking(cohere: CohereStack, stream: bool) -> None:
    client = anthropic_client(cohere.url)
    params: Any = {
        "model": "command-a-reasoning",
        "max_tokens": 2000,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": PROMPT}],
    }
    if stream:
        async with client.messages.stream(**params) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(**params)

    assert [block.type for block in message.content] == ["thinking", "text"]
    thought = message.content[0]
    assert thought.type == "thinking"
    assert thought.thinking.startswith(f"The user asked: {PROMPT}")
    text = message.content[1]
    assert text.type == "text"
    assert text.text == f"Hello from command-a-reasoning-08-2025. You said: {PROMPT}"
    assert message.usage.output_tokens == count_tokens(text.text) + count_tokens(thought.thinking)
    body = cohere.sim.requests[-1].body
    assert body["thinking"] == {"type": "enabled", "token_budget": 1024}


# --- errors ----------------------------------------------------------------------------


async def test_upstream_429_maps_to_rate_limit(cohere: CohereStack) -> None:
    cohere.sim.faults.append(Fault(status=429, retry_after=2, times=5))
    with pytest.raises(openai.RateLimitError) as caught:
        await openai_client(cohere.url).chat.completions.create(
            model="command-a", messages=[{"role": "user", "content": PROMPT}]
        )
    assert caught.value.response.headers["retry-after"] == "2"
    assert "Trial key" in str(caught.value)
    # 2 s is above the configured 0.5 s maximum wait, so the gateway did not retry.
    assert len(cohere.sim.requests) == 1


async def test_upstream_500_is_retried(cohere: CohereStack) -> None:
    cohere.sim.faults.append(Fault(status=500, times=1))
    response = await openai_client(cohere.url).chat.completions.create(
        model="command-a", messages=[{"role": "user", "content": PROMPT}]
    )
    assert response.choices[0].message.content == (
        f"Hello from command-a-03-2025. You said: {PROMPT}"
    )
    assert len(cohere.sim.requests) == 2


async def _consume_stream(url: str, ingress: str, model: str) -> None:
    prompt = "please write a few more words than usual for this stream"
    messages: Any = [{"role": "user", "content": prompt}]
    if ingress == "openai":
        chunks = await openai_client(url).chat.completions.create(
            model=model, messages=messages, stream=True
        )
        async for _ in chunks:
            pass
    else:
        async with anthropic_client(url).messages.stream(
            model=model, max_tokens=200, messages=messages
        ) as events:
            await events.get_final_message()


@pytest.mark.parametrize("ingress", INGRESSES)
async def test_stream_error_event_reaches_client(cohere: CohereStack, ingress: str) -> None:
    # The delay makes the first events reach the caller before the error does.
    cohere.sim.faults.append(
        Fault(error_after=3, chunk_delay=0.05, message="generation failed upstream", times=2)
    )
    error = openai.APIError if ingress == "openai" else anthropic.APIError
    with pytest.raises(error) as caught:
        await _consume_stream(cohere.url, ingress, "command-a")
    assert "generation failed upstream" in str(caught.value)


@pytest.mark.parametrize("ingress", INGRESSES)
async def test_stream_cut_reaches_client(cohere: CohereStack, ingress: str) -> None:
    cohere.sim.faults.append(Fault(disconnect_after=3, chunk_delay=0.05, times=2))
    error = openai.APIError if ingress == "openai" else anthropic.APIError
    with pytest.raises(error):
        await _consume_stream(cohere.url, ingress, "command-a")


# --- a stream that ends cleanly but without message-end --------------------------------


async def _unfinished_stream(request: web.Request) -> web.StreamResponse:
    """Send message-start and text, then end the body without message-end."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    events = [
        {"id": "scripted", "type": "message-start", "delta": {"message": {"role": "assistant"}}},
        {
            "type": "content-delta",
            "index": 0,
            "delta": {"message": {"content": {"text": "Hello "}}},
        },
    ]
    for event in events:
        line = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
        await response.write(line.encode())
    await response.write_eof()
    return response


@pytest.fixture
async def unfinished_upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v2/chat", _unfinished_stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    providers: dict[str, Provider] = {
        "scripted": CohereProvider(
            "scripted", api_key=Secret(COHERE_KEY), base_url=f"http://127.0.0.1:{port}"
        )
    }
    gateway = await start_gateway_for(providers, {"scripted": ("scripted", "command-a-03-2025")})
    try:
        yield gateway.url
    finally:
        await gateway.stop()
        await runner.cleanup()


@pytest.mark.parametrize("ingress", INGRESSES)
async def test_stream_without_message_end_is_an_error(
    unfinished_upstream: str, ingress: str
) -> None:
    error = openai.APIError if ingress == "openai" else anthropic.APIError
    with pytest.raises(error) as caught:
        await _consume_stream(unfinished_upstream, ingress, "scripted")
    assert "ended before message-end" in str(caught.value)


# --- finish reasons the simulator does not produce -------------------------------------


def test_error_finish_raises_in_response() -> None:
    body = {"id": "r1", "message": {"role": "assistant", "content": []}, "finish_reason": "ERROR"}
    with pytest.raises(UpstreamHTTPError) as caught:
        parse_response(body, provider="cohere")
    assert caught.value.status == 502
    assert caught.value.retryable


def test_timeout_finish_raises_in_stream() -> None:
    decoder = StreamDecoder("cohere")
    decoder.feed(json.dumps({"id": "r1", "type": "message-start", "delta": {}}))
    end = {"type": "message-end", "delta": {"finish_reason": "TIMEOUT", "usage": None}}
    with pytest.raises(UpstreamTimeout):
        decoder.feed(json.dumps(end))


def test_stop_sequence_finish_maps_to_stop() -> None:
    body = {
        "id": "r1",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]},
        "finish_reason": "STOP_SEQUENCE",
        "usage": {"tokens": {"input_tokens": 12.0, "output_tokens": 1.0}, "cached_tokens": 4.0},
    }
    response = parse_response(body, provider="cohere")
    assert response.finish_reason == "stop"
    # Without billed_units the raw token counts are used. SDK types carry them as floats.
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 1)
    assert response.usage.cached_input_tokens == 4


def test_decoder_close_without_message_end() -> None:
    decoder = StreamDecoder("cohere")
    decoder.feed(json.dumps({"id": "r1", "type": "message-start", "delta": {}}))
    with pytest.raises(MalformedUpstreamResponse):
        decoder.close()
