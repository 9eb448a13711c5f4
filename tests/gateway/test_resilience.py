"""Retries, fallbacks, upstream error mapping and client disconnects."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import anthropic
import openai
import orjson
import pytest

from smartflow.config.schema import parse_config
from smartflow.core.errors import ConfigError
from smartflow.gateway.app import GATEWAY_KEY, build_app, start_gateway
from smartflow.sim.base import Fault
from tests.conftest import VIRTUAL_KEY, Stack, start_stack, stop_stack
from tests.gateway.clients import anthropic_client, openai_client

HELLO = [{"role": "user", "content": "hello"}]


async def test_retry_after_429_then_success(stack: Stack) -> None:
    stack.openai.faults.append(Fault(status=429, retry_after=0.3, times=1))
    response = await openai_client(stack.url).chat.completions.create(
        model="gpt-4o", messages=HELLO
    )
    assert response.choices[0].message.content
    first, second = list(stack.openai.requests)[-2:]
    assert second.received_at - first.received_at >= 0.3


async def test_fallback_to_next_provider_on_5xx(stack: Stack) -> None:
    stack.openai.faults.append(Fault(status=500, times=2))
    response = await openai_client(stack.url).chat.completions.with_raw_response.create(
        model="with-fallback", messages=HELLO
    )
    assert response.headers["x-smartflow-deployment"] == "anthropic/claude-haiku-4-5"
    completion = response.parse()
    assert "claude-haiku-4-5" in (completion.choices[0].message.content or "")
    assert len(stack.openai.requests) == 2
    assert len(stack.anthropic.requests) == 1


async def test_429_exhausted_maps_to_rate_limit(stack: Stack) -> None:
    stack.openai.faults.append(Fault(status=429, retry_after=1, times=5))
    with pytest.raises(openai.RateLimitError) as caught:
        await openai_client(stack.url).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.response.headers["retry-after"] == "1"
    assert len(stack.openai.requests) == 2


async def test_anthropic_529_maps_per_dialect(stack: Stack) -> None:
    stack.anthropic.faults.append(Fault(status=529, times=4))
    with pytest.raises(anthropic.InternalServerError) as caught:
        await anthropic_client(stack.url).messages.create(
            model="claude-sonnet-4-5", max_tokens=20, messages=HELLO
        )
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(openai.InternalServerError) as openai_caught:
        await openai_client(stack.url).chat.completions.create(
            model="claude-sonnet-4-5", messages=HELLO
        )
    assert openai_caught.value.status_code == 503


async def test_upstream_4xx_is_not_retried(stack: Stack) -> None:
    stack.openai.faults.append(Fault(status=400, message="bad parameter"))
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client(stack.url).chat.completions.create(
            model="with-fallback", messages=HELLO
        )
    assert "bad parameter" in str(caught.value)
    assert len(stack.openai.requests) == 1
    assert len(stack.anthropic.requests) == 0


async def test_timeout_gives_504() -> None:
    stack = await start_stack(timeouts={"read_s": 0.3}, retry={"attempts_per_deployment": 1})
    try:
        stack.openai.faults.append(Fault(latency=2.0))
        with pytest.raises(openai.APIStatusError) as caught:
            await openai_client(stack.url).chat.completions.create(model="gpt-4o", messages=HELLO)
        assert caught.value.status_code == 504
        assert "did not respond within 0.3 s" in str(caught.value)
    finally:
        await stop_stack(stack)


async def test_connection_refused_falls_back() -> None:
    stack = await start_stack()
    try:
        await stack.openai.stop()
        response = await openai_client(stack.url).chat.completions.create(
            model="with-fallback", messages=HELLO
        )
        assert "claude-haiku-4-5" in (response.choices[0].message.content or "")
    finally:
        await stop_stack(stack)


async def test_connection_refused_hides_upstream_address() -> None:
    stack = await start_stack()
    address = stack.openai.base_url.removeprefix("http://")
    try:
        await stack.openai.stop()
        with pytest.raises(openai.APIStatusError) as caught:
            await openai_client(stack.url).chat.completions.create(model="gpt-4o", messages=HELLO)
    finally:
        await stop_stack(stack)
    assert caught.value.status_code == 502
    assert "Cannot connect to" in str(caught.value)
    assert address not in str(caught.value)


async def test_stream_not_retried_after_first_byte(stack: Stack) -> None:
    stack.openai.faults.append(Fault(disconnect_after=3))
    stream = await openai_client(stack.url).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "a somewhat longer prompt for chunks"}],
        stream=True,
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    assert len(stack.openai.requests) == 1


async def test_stream_retried_before_first_byte(stack: Stack) -> None:
    stack.anthropic.faults.append(Fault(status=529, times=1))
    async with anthropic_client(stack.url).messages.stream(
        model="claude-sonnet-4-5", max_tokens=50, messages=HELLO
    ) as events:
        message = await events.get_final_message()
    assert message.stop_reason == "end_turn"
    assert len(stack.anthropic.requests) == 2


@pytest.mark.parametrize(
    ("path", "model"), [("/v1/chat/completions", "gpt-4o"), ("/v1/messages", "claude-sonnet-4-5")]
)
async def test_client_disconnect_cancels_upstream(stack: Stack, path: str, model: str) -> None:
    sim = stack.openai if path.endswith("completions") else stack.anthropic
    # A pause longer than the 1 s budget: only cancelling on disconnect can meet it.
    sim.faults.append(Fault(chunk_delay=1.5))
    body = {
        "model": model,
        "max_tokens": 500,
        "stream": True,
        "messages": [{"role": "user", "content": "tell me a long story " * 20}],
    }
    headers = {"Authorization": f"Bearer {VIRTUAL_KEY}", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as http:
        response = await http.post(stack.url + path, data=orjson.dumps(body), headers=headers)
        assert response.status == 200
        await response.content.readany()
        response.close()
        disconnected_at = time.time()
    deadline = disconnected_at + 1.0
    while time.time() < deadline and not sim.cancelled:
        await asyncio.sleep(0.02)
    assert sim.cancelled, "the simulator never saw the upstream request cancelled"
    assert sim.cancelled[0]["at"] - disconnected_at < 1.0


async def test_upstream_auth_failure_is_gateway_error() -> None:
    stack = await start_stack()
    try:
        stack.openai.api_keys = frozenset({"some-other-key"})
        with pytest.raises(openai.APIStatusError) as caught:
            await openai_client(stack.url).chat.completions.create(model="gpt-4o", messages=HELLO)
        assert caught.value.status_code == 502
        assert "rejected the gateway's credential (HTTP 401)" in str(caught.value)
    finally:
        await stop_stack(stack)


async def test_disconnect_logs_no_traceback(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """A caller leaving mid-stream is routine: logged at INFO, never as an unexpected error."""
    body = {
        "model": "gpt-4o",
        "stream": True,
        "messages": [{"role": "user", "content": "story " * 200}],
    }
    stack.openai.faults.append(Fault(chunk_delay=0.05))
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            stack.url + "/v1/chat/completions",
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {VIRTUAL_KEY}"},
        )
        await response.content.readany()
        response.close()
    await asyncio.sleep(0.3)
    errors = [r for r in caplog.records if r.levelno >= 40 and r.name.startswith("smartflow")]
    assert errors == []


async def test_failed_start_closes_provider_session(tmp_path: Path) -> None:
    # A file where the state directory should be makes the usage queue fail at startup,
    # after the provider session has opened.
    state_file = tmp_path / "state"
    state_file.write_text("not a directory")
    config = parse_config({"state_dir": str(state_file), "usage": {"enabled": True}})
    app = build_app(config)
    with pytest.raises(ConfigError, match="Cannot open the usage queue"):
        await start_gateway(app, "127.0.0.1", 0)
    session = app[GATEWAY_KEY].dispatcher.session
    assert session is not None
    assert session.closed
