"""Same-dialect traffic keeps fields the gateway does not know, both ways."""

from __future__ import annotations

import json

import aiohttp
import orjson

from tests.conftest import VIRTUAL_KEY, Stack
from tests.gateway.clients import anthropic_client, openai_client


async def test_openai_unknown_request_field_reaches_upstream(stack: Stack) -> None:
    await openai_client(stack.url).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"x_future_option": {"level": 3}},
    )
    received = stack.openai.requests[-1].body
    assert received["x_future_option"] == {"level": 3}
    assert received["model"] == "gpt-4o"


async def test_openai_unknown_response_field_reaches_caller(stack: Stack) -> None:
    stack.openai.extra_response_fields["x_upstream_addition"] = "kept"
    raw = await openai_client(stack.url).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert json.loads(raw.text)["x_upstream_addition"] == "kept"


async def test_openai_unknown_stream_field_reaches_caller(stack: Stack) -> None:
    stack.openai.extra_response_fields["x_upstream_addition"] = "kept"
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            stack.url + "/v1/chat/completions",
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {VIRTUAL_KEY}"},
        ) as response:
            text = await response.text()
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert chunks
    assert all(chunk["x_upstream_addition"] == "kept" for chunk in chunks)


async def test_anthropic_unknown_request_field_reaches_upstream(stack: Stack) -> None:
    await anthropic_client(stack.url).messages.create(
        model="claude-sonnet-4-5",
        max_tokens=20,
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"service_tier": "standard_only", "inference_geo": "us"},
        extra_headers={"anthropic-beta": "future-feature-2030-01-01"},
    )
    received = stack.anthropic.requests[-1]
    assert received.body["service_tier"] == "standard_only"
    assert received.body["inference_geo"] == "us"
    assert received.headers["anthropic-beta"] == "future-feature-2030-01-01"


async def test_cross_dialect_maps_model_and_key(stack: Stack) -> None:
    await anthropic_client(stack.url).messages.create(
        model="gpt-4o", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    received = stack.openai.requests[-1]
    assert received.body["max_completion_tokens"] == 20
    assert received.headers["authorization"].startswith("sha256:")
