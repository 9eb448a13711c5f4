"""Conformance matrix: both SDKs through the gateway to every provider, streamed and not."""

from __future__ import annotations

import json

import pytest

from smartflow.sim.script import count_tokens
from tests.conftest import MODELS, Stack
from tests.gateway.clients import (
    TIME_TOOL,
    WEATHER_TOOL,
    anthropic_chat,
    anthropic_tools,
    openai_chat,
    openai_tools,
)

INGRESSES = ["openai", "anthropic"]
PROVIDERS = list(MODELS)
STREAMING = [False, True]
PROMPT = "Good morning, gateway"


def _ids(values: list[object], name: str) -> list[str]:
    return [f"{name}={v}" for v in values]


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_plain_text(stack: Stack, ingress: str, provider: str, stream: bool) -> None:
    model = MODELS[provider][0]
    if ingress == "openai":
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
        outcome = await openai_chat(stack.url, model, messages, stream=stream)
    else:
        messages = [{"role": "user", "content": PROMPT}]
        outcome = await anthropic_chat(
            stack.url, model, messages, stream=stream, system="Be brief."
        )

    assert outcome.text.startswith("Hello from ")
    assert outcome.text.endswith(f"You said: {PROMPT}")
    assert outcome.tool_calls == []
    assert outcome.finish == "stop"
    assert outcome.output_tokens == count_tokens(outcome.text)
    assert outcome.input_tokens >= count_tokens(PROMPT) + count_tokens("Be brief.")

    received = stack.sim(provider).requests[-1]
    assert received.path.endswith(("/chat/completions", "/v1/messages"))


async def _tool_round_trip_openai(stack: Stack, model: str, stream: bool, parallel: bool) -> tuple:
    prompt = "Call the weather tool for Paris" + (
        " and the time tool, in parallel" if parallel else ""
    )
    tools = openai_tools([WEATHER_TOOL, TIME_TOOL])
    messages: list[dict] = [{"role": "user", "content": prompt}]
    first = await openai_chat(stack.url, model, messages, stream=stream, tools=tools)
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": i, "type": "function", "function": {"name": n, "arguments": _json(a)}}
                for i, n, a in first.tool_calls
            ],
        }
    )
    for number, (call_id, _, _) in enumerate(first.tool_calls):
        messages.append({"role": "tool", "tool_call_id": call_id, "content": f"result-{number}"})
    second = await openai_chat(stack.url, model, messages, stream=stream, tools=tools)
    return first, second


async def _tool_round_trip_anthropic(
    stack: Stack, model: str, stream: bool, parallel: bool
) -> tuple:
    prompt = "Call the weather tool for Paris" + (
        " and the time tool, in parallel" if parallel else ""
    )
    tools = anthropic_tools([WEATHER_TOOL, TIME_TOOL])
    messages: list[dict] = [{"role": "user", "content": prompt}]
    first = await anthropic_chat(stack.url, model, messages, stream=stream, tools=tools)
    messages.append(
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in first.tool_calls
            ],
        }
    )
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call_id, "content": f"result-{number}"}
                for number, (call_id, _, _) in enumerate(first.tool_calls)
            ],
        }
    )
    second = await anthropic_chat(stack.url, model, messages, stream=stream, tools=tools)
    return first, second


def _json(value: object) -> str:
    return json.dumps(value)


@pytest.mark.parametrize("parallel", [False, True], ids=["one-call", "two-calls"])
@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_tool_round_trip(
    stack: Stack, ingress: str, provider: str, stream: bool, parallel: bool
) -> None:
    model = MODELS[provider][0]
    run = _tool_round_trip_openai if ingress == "openai" else _tool_round_trip_anthropic
    first, second = await run(stack, model, stream, parallel)

    expected_names = ["get_weather", "get_time"] if parallel else ["get_weather"]
    assert [name for _, name, _ in first.tool_calls] == expected_names
    assert first.tool_calls[0][2] == {"location": "sample", "unit": "celsius"}
    if parallel:
        assert first.tool_calls[1][2] == {"city": "sample"}
    ids = [call_id for call_id, _, _ in first.tool_calls]
    assert all(ids)
    assert len(set(ids)) == len(ids)
    assert first.finish == "tool_calls"
    assert first.text == ""
    assert first.output_tokens > 0
    assert first.input_tokens > 0

    expected_results = "; ".join(f"result-{n}" for n in range(len(expected_names)))
    assert second.text == f"Tool results received: {expected_results}"
    assert second.tool_calls == []
    assert second.finish == "stop"
    assert second.output_tokens == count_tokens(second.text)


IMAGE_PROMPT = "What is in this picture?"
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="  # noqa: E501


@pytest.mark.parametrize("stream", STREAMING, ids=_ids(STREAMING, "stream"))
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("ingress", INGRESSES)
async def test_image_input(stack: Stack, ingress: str, provider: str, stream: bool) -> None:
    model = MODELS[provider][0]
    if ingress == "openai":
        content: list[dict] = [
            {"type": "text", "text": IMAGE_PROMPT},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        ]
        outcome = await openai_chat(
            stack.url, model, [{"role": "user", "content": content}], stream=stream
        )
    else:
        content = [
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
            },
            {"type": "text", "text": IMAGE_PROMPT},
        ]
        outcome = await anthropic_chat(
            stack.url, model, [{"role": "user", "content": content}], stream=stream
        )

    assert "I see 1 image(s)" in outcome.text
    assert outcome.tool_calls == []
    assert outcome.finish == "stop"
    assert outcome.output_tokens == count_tokens(outcome.text)
    assert outcome.input_tokens >= count_tokens(IMAGE_PROMPT)
    assert PIXEL in json.dumps(stack.sim(provider).requests[-1].body)
