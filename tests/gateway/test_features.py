"""Images, structured output, token counting and model listing through the gateway."""

from __future__ import annotations

import base64
import json

import anthropic
import pytest

from tests.conftest import MODELS, Stack
from tests.gateway.clients import anthropic_client, openai_client

PIXEL = base64.b64encode(
    bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")
).decode()
IMAGE_URL = "https://images.example.com/cat.png"


@pytest.mark.parametrize("provider", list(MODELS))
async def test_openai_ingress_images(stack: Stack, provider: str) -> None:
    content = [
        {"type": "text", "text": "What is in these pictures?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        {"type": "image_url", "image_url": {"url": IMAGE_URL}},
    ]
    response = await openai_client(stack.url).chat.completions.create(
        model=MODELS[provider][0], messages=[{"role": "user", "content": content}]
    )
    assert "I see 2 image(s)" in (response.choices[0].message.content or "")
    received = json.dumps(stack.sim(provider).requests[-1].body)
    assert PIXEL in received
    assert IMAGE_URL in received


@pytest.mark.parametrize("provider", list(MODELS))
async def test_anthropic_ingress_images(stack: Stack, provider: str) -> None:
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
        {"type": "image", "source": {"type": "url", "url": IMAGE_URL}},
        {"type": "text", "text": "Describe them."},
    ]
    message = await anthropic_client(stack.url).messages.create(
        model=MODELS[provider][0], max_tokens=100, messages=[{"role": "user", "content": content}]
    )
    assert message.content[0].type == "text"
    assert "I see 2 image(s)" in message.content[0].text
    received = json.dumps(stack.sim(provider).requests[-1].body)
    assert PIXEL in received
    assert IMAGE_URL in received


@pytest.mark.parametrize("provider", list(MODELS))
async def test_openai_json_schema_output(stack: Stack, provider: str) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    }
    response = await openai_client(stack.url).chat.completions.create(
        model=MODELS[provider][0],
        messages=[{"role": "user", "content": "Largest city?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    assert json.loads(response.choices[0].message.content or "") == {
        "city": "sample",
        "population": 1,
    }


async def test_openai_json_mode_to_claude(stack: Stack) -> None:
    response = await openai_client(stack.url).chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": "Answer in JSON"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(response.choices[0].message.content or ""), dict)


async def test_count_tokens_forwarded_to_anthropic(stack: Stack) -> None:
    count = await anthropic_client(stack.url).messages.count_tokens(
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": "count these words please"}],
    )
    assert count.input_tokens > 0
    assert stack.anthropic.requests[-1].path == "/v1/messages/count_tokens"


async def test_count_tokens_estimated_for_openai_models(stack: Stack) -> None:
    client = anthropic_client(stack.url)
    raw = await client.messages.with_raw_response.count_tokens(
        model="gpt-4o", messages=[{"role": "user", "content": "x" * 400}]
    )
    assert raw.headers["x-smartflow-token-count"] == "estimate"
    assert (await raw.parse()).input_tokens == 104


async def test_models_listed_in_both_dialects(stack: Stack) -> None:
    openai_models = [m.id async for m in openai_client(stack.url).models.list()]
    assert openai_models == sorted(
        ["gpt-4o", "azure-gpt-4o", "claude-sonnet-4-5", "gpt-4o-mini", "with-fallback"]
    )
    anthropic_models = [m.id async for m in anthropic_client(stack.url).models.list()]
    assert anthropic_models == openai_models


async def test_models_need_a_key(stack: Stack) -> None:
    client = anthropic.AsyncAnthropic(base_url=stack.url, api_key="sk-sf-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        await client.models.list()
