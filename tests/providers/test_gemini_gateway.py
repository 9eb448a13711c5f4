"""Gemini API and Vertex AI behind the gateway, judged by the openai and anthropic SDKs.

Every request goes to a GeminiSimulator (or a scripted server) on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.core.errors import ConfigError, MalformedUpstreamResponse
from smartflow.gateway.app import RunningGateway, build_app, start_gateway
from smartflow.providers.base import Provider, Secret
from smartflow.providers.gemini import GeminiProvider, VertexGeminiProvider
from smartflow.sim.base import Fault
from smartflow.sim.gemini import GeminiSimulator
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

GEMINI_KEY = "gemini-test-key"
VERTEX_TOKEN = "vertex-test-token"
PROMPT = "Good morning, gateway"
SYSTEM = "Be brief."
# A 1x1 transparent PNG.
PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
SKIP_SIGNATURE = "skip_thought_signature_validator"

# Public model name: (provider, upstream model).
MODELS = {
    "gemini-flash": ("gemini", "gemini-2.0-flash"),
    "gemini-thinking": ("gemini", "gemini-2.5-flash"),
    "gemini-3": ("gemini", "gemini-3-flash-preview"),
    "vertex-flash": ("vertex", "gemini-2.0-flash"),
    "vertex-wrong-token": ("vertex_wrong_token", "gemini-2.0-flash"),
}
INGRESSES = ["openai", "anthropic"]
STREAMING = [False, True]


@dataclass
class GeminiStack:
    url: str
    sim: GeminiSimulator
    gateway: RunningGateway


def gateway_config(providers: dict[str, Provider], models: dict[str, tuple[str, str]]) -> Any:
    return parse_config(
        {
            "server": {"access_log": False},
            # The config schema has no Gemini provider type yet. These entries only
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
async def gemini() -> AsyncIterator[GeminiStack]:
    sim = GeminiSimulator(api_keys=[GEMINI_KEY], access_tokens=[VERTEX_TOKEN])
    url = await sim.start()
    vertex = {"project": "test-project", "location": "us-central1", "base_url": url}
    providers: dict[str, Provider] = {
        "gemini": GeminiProvider("gemini", api_key=Secret(GEMINI_KEY), base_url=url),
        "vertex": VertexGeminiProvider("vertex", access_token=Secret(VERTEX_TOKEN), **vertex),
        "vertex_wrong_token": VertexGeminiProvider(
            "vertex_wrong_token", access_token=Secret("not-the-token"), **vertex
        ),
    }
    gateway = await start_gateway_for(providers, MODELS)
    try:
        yield GeminiStack(gateway.url, sim, gateway)
    finally:
        await gateway.stop()
        await sim.stop()


def _ids(values: list[Any], name: str) -> list[str]:
    return [f"{name}={v}" for v in values]


def sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# --- plain text, both surfaces ---------------------------------------------------------


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("model", ["gemini-flash", "vertex-flash"])
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_plain_text(gemini: GeminiStack, ingress: str, model: str, stream: bool) -> None:
    if ingress == "openai":
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
        outcome = await openai_chat(gemini.url, model, messages, stream=stream)
    else:
        messages = [{"role": "user", "content": PROMPT}]
        outcome = await anthropic_chat(gemini.url, model, messages, stream=stream, system=SYSTEM)

    assert outcome.text == f"Hello from gemini-2.0-flash. You said: {PROMPT}"
    assert outcome.tool_calls == []
    assert outcome.finish == "stop"
    assert outcome.output_tokens == count_tokens(outcome.text)
    assert outcome.input_tokens == count_tokens(PROMPT) + count_tokens(SYSTEM)

    received = gemini.sim.requests[-1]
    assert received.body["systemInstruction"] == {"parts": [{"text": SYSTEM}]}
    assert received.body["contents"] == [{"role": "user", "parts": [{"text": PROMPT}]}]
    method = ":streamGenerateContent" if stream else ":generateContent"
    if model == "vertex-flash":
        assert received.path == (
            "/v1/projects/test-project/locations/us-central1/publishers/google/models/"
            f"gemini-2.0-flash{method}"
        )
        assert received.headers["authorization"] == sha256(f"Bearer {VERTEX_TOKEN}")
        assert "x-goog-api-key" not in received.headers
    else:
        assert received.path == f"/v1beta/models/gemini-2.0-flash{method}"
        assert received.headers["x-goog-api-key"] == sha256(GEMINI_KEY)
        assert "authorization" not in received.headers
    assert received.query == ({"alt": "sse"} if stream else {})


# --- tool calls ------------------------------------------------------------------------


async def _tool_round_trip(
    url: str, ingress: str, model: str, stream: bool, parallel: bool
) -> tuple[Any, Any]:
    prompt = "Call the weather tool for Paris" + (
        " and the time tool, in parallel" if parallel else ""
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    if ingress == "openai":
        tools = openai_tools([WEATHER_TOOL, TIME_TOOL])
        first = await openai_chat(url, model, messages, stream=stream, tools=tools)
        calls = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, n, a in first.tool_calls
        ]
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        for number, (call_id, _, _) in enumerate(first.tool_calls):
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": f"result-{number}"}
            )
        second = await openai_chat(url, model, messages, stream=stream, tools=tools)
        return first, second
    tools = anthropic_tools([WEATHER_TOOL, TIME_TOOL])
    first = await anthropic_chat(url, model, messages, stream=stream, tools=tools)
    uses = [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in first.tool_calls]
    results = [
        {"type": "tool_result", "tool_use_id": call_id, "content": f"result-{number}"}
        for number, (call_id, _, _) in enumerate(first.tool_calls)
    ]
    messages += [{"role": "assistant", "content": uses}, {"role": "user", "content": results}]
    second = await anthropic_chat(url, model, messages, stream=stream, tools=tools)
    return first, second


def _function_parts(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [p[kind] for c in body["contents"] for p in c["parts"] if kind in p]


@pytest.mark.parametrize("parallel", [False, True], ids=["one-call", "two-calls"])
@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_tool_round_trip(
    gemini: GeminiStack, ingress: str, stream: bool, parallel: bool
) -> None:
    first, second = await _tool_round_trip(gemini.url, ingress, "gemini-flash", stream, parallel)

    expected_names = ["get_weather", "get_time"] if parallel else ["get_weather"]
    assert [name for _, name, _ in first.tool_calls] == expected_names
    assert first.tool_calls[0][2] == {"location": "sample", "unit": "celsius"}
    if parallel:
        assert first.tool_calls[1][2] == {"city": "sample"}
    ids = [call_id for call_id, _, _ in first.tool_calls]
    # The simulator numbers its function call ids fc_0000, fc_0001, ...
    assert all(call_id.startswith("fc_") for call_id in ids)
    assert len(set(ids)) == len(ids)
    assert first.finish == "tool_calls"
    assert first.text == ""
    assert first.output_tokens > 0
    assert first.input_tokens > 0

    replayed = gemini.sim.requests[-1].body
    calls = _function_parts(replayed, "functionCall")
    assert [(c["id"], c["name"]) for c in calls] == list(zip(ids, expected_names, strict=True))
    results = _function_parts(replayed, "functionResponse")
    assert [(r["id"], r["name"]) for r in results] == list(zip(ids, expected_names, strict=True))
    assert [r["response"] for r in results] == [{"output": f"result-{n}"} for n in range(len(ids))]
    # Parallel results share one user turn after the model turn.
    assert [c["role"] for c in replayed["contents"]] == ["user", "model", "user"]

    expected_results = "; ".join(
        json.dumps({"output": f"result-{n}"}) for n in range(len(expected_names))
    )
    assert second.text == f"Tool results received: {expected_results}"
    assert second.tool_calls == []
    assert second.finish == "stop"
    assert second.output_tokens == count_tokens(second.text)


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_missing_call_ids_are_generated(
    gemini: GeminiStack, ingress: str, stream: bool
) -> None:
    gemini.sim.function_call_ids = False
    first, second = await _tool_round_trip(gemini.url, ingress, "gemini-flash", stream, True)

    ids = [call_id for call_id, _, _ in first.tool_calls]
    assert len(ids) == 2
    assert all(call_id.startswith("gemini_call_") for call_id in ids)
    assert ids[0] != ids[1]
    replayed = gemini.sim.requests[-1].body
    results = _function_parts(replayed, "functionResponse")
    # The function name comes from the earlier call, and the generated id is not sent.
    assert [r["name"] for r in results] == ["get_weather", "get_time"]
    assert all("id" not in r for r in results)
    assert all("id" not in c for c in _function_parts(replayed, "functionCall"))
    assert second.text.startswith("Tool results received: ")


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_thought_signature_round_trip(
    gemini: GeminiStack, ingress: str, stream: bool
) -> None:
    first, second = await _tool_round_trip(gemini.url, ingress, "gemini-3", stream, True)

    ids = [call_id for call_id, _, _ in first.tool_calls]
    assert "__sig_" in ids[0]
    assert "__sig_" not in ids[1]
    replayed = gemini.sim.requests[-1].body
    model_parts = [p for c in replayed["contents"] if c["role"] == "model" for p in c["parts"]]
    expected = base64.b64encode(
        b"smartflow-sim-thought-signature:" + ids[0].split("__")[0].encode()
    )
    assert model_parts[0]["thoughtSignature"] == expected.decode()
    assert "thoughtSignature" not in model_parts[1]
    # The simulator rejects a Gemini 3 call turn without a valid signature with 400.
    assert second.text.startswith("Tool results received: ")
    assert second.finish == "stop"


async def test_foreign_tool_history_gets_skip_signature(gemini: GeminiStack) -> None:
    messages = [
        {"role": "user", "content": "Call the weather tool for Paris"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_from_elsewhere",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_from_elsewhere", "content": "sunny"},
    ]
    response = await openai_client(gemini.url).chat.completions.create(
        model="gemini-3", messages=messages, tools=openai_tools([WEATHER_TOOL])
    )

    assert response.choices[0].message.content == 'Tool results received: {"output": "sunny"}'
    replayed = gemini.sim.requests[-1].body
    model_turn = replayed["contents"][1]
    assert model_turn["parts"][0]["thoughtSignature"] == SKIP_SIGNATURE
    assert model_turn["parts"][0]["functionCall"]["id"] == "call_from_elsewhere"


async def test_tool_result_without_call_is_rejected(gemini: GeminiStack) -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "tool", "tool_call_id": "call_unknown", "content": "orphan"},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client(gemini.url).chat.completions.create(
            model="gemini-flash", messages=messages
        )
    assert "Gemini needs the function name" in str(caught.value)
    assert len(gemini.sim.requests) == 0


async def test_named_tool_choice_forces_that_function(gemini: GeminiStack) -> None:
    response = await openai_client(gemini.url).chat.completions.create(
        model="gemini-flash",
        messages=[{"role": "user", "content": "What now?"}],
        tools=openai_tools([WEATHER_TOOL, TIME_TOOL]),
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )

    calls = response.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_time"]
    config = gemini.sim.requests[-1].body["toolConfig"]["functionCallingConfig"]
    assert config == {"mode": "ANY", "allowedFunctionNames": ["get_time"]}


# --- images ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_image_input(gemini: GeminiStack, ingress: str, stream: bool) -> None:
    question = "What is in this picture?"
    if ingress == "openai":
        content: list[dict[str, Any]] = [
            {"type": "text", "text": question},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        ]
        messages = [{"role": "user", "content": content}]
        outcome = await openai_chat(gemini.url, "gemini-flash", messages, stream=stream)
    else:
        source = {"type": "base64", "media_type": "image/png", "data": PIXEL}
        content = [{"type": "text", "text": question}, {"type": "image", "source": source}]
        messages = [{"role": "user", "content": content}]
        outcome = await anthropic_chat(gemini.url, "gemini-flash", messages, stream=stream)

    assert outcome.text == f"Hello from gemini-2.0-flash. You said: {question} I see 1 image(s)."
    assert outcome.finish == "stop"
    assert outcome.tool_calls == []
    # The simulator counts an image as three prompt tokens.
    assert outcome.input_tokens == count_tokens(question) + 3
    assert outcome.output_tokens == count_tokens(outcome.text)
    parts = gemini.sim.requests[-1].body["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PIXEL}}


async def test_image_url_sent_as_file_data(gemini: GeminiStack) -> None:
    image_url = "https://images.example.com/cat.png"
    content = [
        {"type": "text", "text": "Describe it."},
        {"type": "image_url", "image_url": {"url": image_url}},
    ]
    response = await openai_client(gemini.url).chat.completions.create(
        model="gemini-flash", messages=[{"role": "user", "content": content}]
    )

    assert "I see 1 image(s)" in (response.choices[0].message.content or "")
    parts = gemini.sim.requests[-1].body["contents"][0]["parts"]
    assert parts[1] == {"fileData": {"fileUri": image_url, "mimeType": "image/png"}}


async def test_unsupported_image_url_is_a_400(gemini: GeminiStack) -> None:
    content = [
        {"type": "text", "text": "Describe it."},
        {"type": "image_url", "image_url": {"url": "ftp://images.example.com/cat.png"}},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client(gemini.url).chat.completions.create(
            model="gemini-flash", messages=[{"role": "user", "content": content}]
        )
    assert "Gemini takes images as base64 data or as http, https or gs:// URLs" in str(caught.value)
    assert len(gemini.sim.requests) == 0


# --- safety blocks ---------------------------------------------------------------------


async def _blocked_openai(url: str, prompt: str, stream: bool) -> tuple[str, str | None]:
    client = openai_client(url)
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        response = await client.chat.completions.create(model="gemini-flash", messages=messages)
        choice = response.choices[0]
        return choice.message.content or "", choice.finish_reason
    text, finish = "", None
    chunks = await client.chat.completions.create(
        model="gemini-flash", messages=messages, stream=True
    )
    async for chunk in chunks:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, finish


async def _blocked_anthropic(url: str, prompt: str, stream: bool) -> tuple[str, str | None]:
    client = anthropic_client(url)
    messages: Any = [{"role": "user", "content": prompt}]
    if stream:
        async with client.messages.stream(
            model="gemini-flash", max_tokens=200, messages=messages
        ) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(
            model="gemini-flash", max_tokens=200, messages=messages
        )
    text = "".join(block.text for block in message.content if block.type == "text")
    return text, message.stop_reason


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("ingress", INGRESSES)
@pytest.mark.parametrize(
    ("prompt", "subject", "category"),
    [
        ("Tell me sim-block-prompt now", "the prompt", "HARM_CATEGORY_DANGEROUS_CONTENT"),
        ("Tell me sim-block-response now", "the response", "HARM_CATEGORY_HARASSMENT"),
    ],
    ids=["prompt-block", "response-block"],
)
async def test_safety_block(
    gemini: GeminiStack, ingress: str, stream: bool, prompt: str, subject: str, category: str
) -> None:
    if ingress == "openai":
        text, finish = await _blocked_openai(gemini.url, prompt, stream)
        assert finish == "content_filter"
    else:
        text, finish = await _blocked_anthropic(gemini.url, prompt, stream)
        assert finish == "refusal"
    assert f"Gemini blocked {subject} (reason: SAFETY; category: {category})." in text


# --- generation settings ---------------------------------------------------------------


async def test_json_schema_output(gemini: GeminiStack) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    response = await openai_client(gemini.url).chat.completions.create(
        model="gemini-flash",
        messages=[{"role": "user", "content": "Largest city?"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
        temperature=0.2,
        top_p=0.9,
        max_tokens=200,
        stop=["END"],
        seed=7,
    )

    assert json.loads(response.choices[0].message.content or "") == {
        "city": "sample",
        "population": 1,
    }
    config = gemini.sim.requests[-1].body["generationConfig"]
    assert config == {
        "temperature": 0.2,
        "topP": 0.9,
        "maxOutputTokens": 200,
        "seed": 7,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }


async def test_several_choices_are_rejected(gemini: GeminiStack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client(gemini.url).chat.completions.create(
            model="gemini-flash", messages=[{"role": "user", "content": PROMPT}], n=2
        )
    assert "one choice from Gemini models, so 'n' must be 1 (got 2)" in str(caught.value)
    assert len(gemini.sim.requests) == 0


async def test_max_tokens_gives_length(gemini: GeminiStack) -> None:
    message = await anthropic_client(gemini.url).messages.create(
        model="gemini-flash", max_tokens=3, messages=[{"role": "user", "content": PROMPT}]
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


async def test_thinking_tokens_in_usage(gemini: GeminiStack) -> None:
    response = await openai_client(gemini.url).chat.completions.create(
        model="gemini-thinking",
        messages=[{"role": "user", "content": PROMPT}],
        reasoning_effort="low",
    )

    usage = response.usage
    assert usage is not None
    assert usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens or 0
    text = response.choices[0].message.content or ""
    assert reasoning > 0
    assert usage.completion_tokens == count_tokens(text) + reasoning
    thinking = gemini.sim.requests[-1].body["generationConfig"]["thinkingConfig"]
    # The normalisation table maps effort "low" to a 4096-token budget on Gemini 2.5.
    assert thinking == {"thinkingBudget": 4096, "includeThoughts": True}


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
async def test_thoughts_become_thinking_blocks(gemini: GeminiStack, stream: bool) -> None:
    client = anthropic_client(gemini.url)
    params: Any = {
        "model": "gemini-thinking",
        "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": [{"role": "user", "content": PROMPT}],
    }
    if stream:
        async with client.messages.stream(**params) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(**params)

    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "text"]
    thought = message.content[0]
    assert thought.type == "thinking"
    assert thought.thinking.startswith("**Considering the request**")
    thinking = gemini.sim.requests[-1].body["generationConfig"]["thinkingConfig"]
    assert thinking == {"thinkingBudget": 2000, "includeThoughts": True}


# --- errors ----------------------------------------------------------------------------


async def test_upstream_429_maps_to_rate_limit(gemini: GeminiStack) -> None:
    gemini.sim.faults.append(Fault(status=429, retry_after=3, times=5))
    with pytest.raises(openai.RateLimitError) as caught:
        await openai_client(gemini.url).chat.completions.create(
            model="gemini-flash", messages=[{"role": "user", "content": PROMPT}]
        )
    # The delay comes from the google.rpc.RetryInfo detail. 3 s exceeds the configured
    # 0.5 s maximum wait, so the gateway gave up at once.
    assert caught.value.response.headers["retry-after"] == "3"
    assert len(gemini.sim.requests) == 1


@pytest.mark.parametrize("ingress", INGRESSES)
async def test_upstream_400_keeps_its_message(gemini: GeminiStack, ingress: str) -> None:
    gemini.sim.faults.append(Fault(status=400, message="Invalid value at 'contents'"))
    messages: Any = [{"role": "user", "content": PROMPT}]
    if ingress == "openai":
        with pytest.raises(openai.BadRequestError) as openai_caught:
            await openai_client(gemini.url).chat.completions.create(
                model="gemini-flash", messages=messages
            )
        message = str(openai_caught.value)
    else:
        with pytest.raises(anthropic.BadRequestError) as anthropic_caught:
            await anthropic_client(gemini.url).messages.create(
                model="gemini-flash", max_tokens=50, messages=messages
            )
        message = str(anthropic_caught.value)
    assert "gemini error: Invalid value at 'contents'" in message


async def test_vertex_wrong_token_is_a_gateway_error(gemini: GeminiStack) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await openai_client(gemini.url).chat.completions.create(
            model="vertex-wrong-token", messages=[{"role": "user", "content": PROMPT}]
        )
    assert caught.value.status_code == 502
    assert "rejected the gateway's credential (HTTP 401)" in str(caught.value)
    assert "Request had invalid authentication credentials" in str(caught.value)


async def test_gemini_wrong_key_is_a_gateway_error(gemini: GeminiStack) -> None:
    # The Gemini API returns 400 API_KEY_INVALID for a wrong key, not 401.
    gemini.sim.api_keys = frozenset({"another-key"})
    with pytest.raises(anthropic.InternalServerError) as caught:
        await anthropic_client(gemini.url).messages.create(
            model="gemini-flash", max_tokens=50, messages=[{"role": "user", "content": PROMPT}]
        )
    assert caught.value.status_code == 502
    assert "rejected the gateway's credential (HTTP 401)" in str(caught.value)
    assert "API key not valid" in str(caught.value)


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
async def test_stream_error_event_reaches_client(gemini: GeminiStack, ingress: str) -> None:
    # The delay makes the first events reach the caller before the error does.
    gemini.sim.faults.append(
        Fault(error_after=2, chunk_delay=0.05, message="backend exploded", times=2)
    )
    error = openai.APIError if ingress == "openai" else anthropic.APIError
    with pytest.raises(error) as caught:
        await _consume_stream(gemini.url, ingress, "gemini-flash")
    assert "backend exploded" in str(caught.value)


@pytest.mark.parametrize("ingress", INGRESSES)
async def test_stream_cut_reaches_client(gemini: GeminiStack, ingress: str) -> None:
    gemini.sim.faults.append(Fault(disconnect_after=2, chunk_delay=0.05, times=2))
    error = openai.APIError if ingress == "openai" else anthropic.APIError
    with pytest.raises(error):
        await _consume_stream(gemini.url, ingress, "gemini-flash")


# --- a stream that ends cleanly but without a finish reason ----------------------------


async def _unfinished_stream(request: web.Request) -> web.StreamResponse:
    """Send two well-formed chunks, neither with a finishReason, then end the body."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for text in ("Hello ", "there"):
        chunk = {
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}}],
            "responseId": "scripted",
            "modelVersion": "gemini-2.0-flash",
        }
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
    await response.write_eof()
    return response


@pytest.fixture
async def unfinished_upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1beta/models/{name}", _unfinished_stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    providers: dict[str, Provider] = {
        "scripted": GeminiProvider(
            "scripted", api_key=Secret(GEMINI_KEY), base_url=f"http://127.0.0.1:{port}"
        )
    }
    gateway = await start_gateway_for(providers, {"scripted": ("scripted", "gemini-2.0-flash")})
    try:
        yield gateway.url
    finally:
        await gateway.stop()
        await runner.cleanup()


@pytest.mark.parametrize("ingress", INGRESSES)
async def test_stream_without_finish_reason_is_an_error(
    unfinished_upstream: str, ingress: str
) -> None:
    error = openai.APIError if ingress == "openai" else anthropic.APIError
    with pytest.raises(error) as caught:
        await _consume_stream(unfinished_upstream, ingress, "scripted")
    assert "ended before a chunk with a finishReason" in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("CONTINUATION", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "error"),
        ("A_REASON_ADDED_LATER", "error"),
    ],
)
def test_finish_reason_mapping(raw: str, expected: str) -> None:
    from smartflow.dialects.gemini.responses import parse_response

    body = {
        "candidates": [{"content": {"parts": [{"text": "Hi"}]}, "finishReason": raw}],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1, "totalTokenCount": 5},
    }
    response = parse_response(body, provider="gemini")
    assert response.finish_reason == expected
    assert response.text().startswith("Hi")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (4, 1)


def test_decoder_close_without_finish_reason() -> None:
    from smartflow.dialects.gemini.streaming import StreamDecoder

    decoder = StreamDecoder("gemini")
    chunk = {"candidates": [{"content": {"parts": [{"text": "partial"}]}}], "responseId": "r1"}
    events = decoder.feed(json.dumps(chunk))
    assert [type(e).__name__ for e in events] == ["StreamStart", "TextDelta"]
    with pytest.raises(MalformedUpstreamResponse):
        decoder.close()


# --- configuration ---------------------------------------------------------------------


def test_vertex_needs_exactly_one_credential() -> None:
    with pytest.raises(ConfigError, match="give either an access token"):
        VertexGeminiProvider("vertex", project="test-project", location="us-central1")
    with pytest.raises(ConfigError, match="not both"):
        VertexGeminiProvider(
            "vertex",
            project="test-project",
            location="us-central1",
            access_token=Secret(VERTEX_TOKEN),
            credentials_file="/nonexistent/key.json",
        )


def test_vertex_unreadable_credentials_file(tmp_path: Path) -> None:
    # Loading the file does not contact Google; only a token refresh would.
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError, match="cannot read the service-account file"):
        VertexGeminiProvider("vertex", project="p-1", location="global", credentials_file=missing)
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read the service-account file"):
        VertexGeminiProvider(
            "vertex", project="p-1", location="global", credentials_file=incomplete
        )


def test_vertex_rejects_invalid_location() -> None:
    with pytest.raises(ConfigError, match="invalid Vertex AI location"):
        VertexGeminiProvider(
            "vertex",
            project="test-project",
            location="evil.example.com/x",
            access_token=Secret(VERTEX_TOKEN),
        )


def test_vertex_default_hosts() -> None:
    regional = VertexGeminiProvider(
        "vertex", project="p-1", location="europe-west4", access_token=Secret(VERTEX_TOKEN)
    )
    target = regional.chat_target("gemini-2.5-flash", stream=False, client_headers={})
    assert target.url == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/p-1/locations/"
        "europe-west4/publishers/google/models/gemini-2.5-flash:generateContent"
    )
    global_endpoint = VertexGeminiProvider(
        "vertex", project="p-1", location="global", access_token=Secret(VERTEX_TOKEN)
    )
    target = global_endpoint.chat_target("gemini-3-pro-preview", stream=True, client_headers={})
    assert target.url.startswith("https://aiplatform.googleapis.com/v1/projects/p-1/")
    assert target.url.endswith(":streamGenerateContent?alt=sse")
