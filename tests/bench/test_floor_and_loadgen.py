"""The floor proxy, judged by the OpenAI SDK, and the open-loop generator, both on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
from aiohttp.test_utils import TestServer
from floor_proxy import build_app, require_loopback_url
from harness.cases import CHAT, CHAT_STREAM
from loadgen import LoadSettings, percentile, run_open_loop
from mock_upstream import CONTENT_PARTS, UpstreamState


@pytest.fixture
async def floor(upstream: tuple[str, UpstreamState]) -> AsyncIterator[str]:
    """Run the floor proxy in front of the mock upstream; yield its base URL."""
    server = TestServer(build_app(upstream[0]), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_floor_forwards_completion(floor: str) -> None:
    client = openai.AsyncOpenAI(base_url=floor + "/v1", api_key="sk-fake-test", max_retries=0)
    async with client:
        completion = await client.chat.completions.create(
            model="bench-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert completion.choices[0].message.content == "".join(CONTENT_PARTS)


async def test_floor_streams_events(floor: str) -> None:
    client = openai.AsyncOpenAI(base_url=floor + "/v1", api_key="sk-fake-test", max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="bench-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert len(chunks) == 20
    assert chunks[-1].usage is not None


async def test_floor_returns_upstream_errors(floor: str) -> None:
    client = openai.AsyncOpenAI(base_url=floor + "/v2", api_key="sk-fake-test", max_retries=0)
    async with client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="m", messages=[])


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1:9000", "http://example.com", "http://169.254.169.254"]
)
def test_floor_rejects_non_loopback_upstream(url: str) -> None:
    with pytest.raises(ValueError, match="not on loopback"):
        require_loopback_url(url)


def test_loopback_urls_accepted() -> None:
    assert require_loopback_url("http://127.0.0.1:9000/") == "http://127.0.0.1:9000"
    assert require_loopback_url("http://localhost:1") == "http://localhost:1"
    assert require_loopback_url("http://[::1]:1") == "http://[::1]:1"


def test_percentile_nearest_rank() -> None:
    values = [float(number) for number in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0], 0.99) == 3.0


async def test_loadgen_measures_every_request(upstream: tuple[str, UpstreamState]) -> None:
    base_url, state = upstream
    settings = LoadSettings(
        url=base_url + CHAT_STREAM.upstream_request.path,
        body=CHAT_STREAM.upstream_request.body,
        headers={"Content-Type": "application/json"},
        rate=100.0,
        duration_s=0.5,
        warmup_s=0.1,
        expect_suffix=CHAT_STREAM.upstream_request.expect_suffix,
        keep_samples=True,
    )
    summary = await run_open_loop(settings)
    assert summary["requests"] == 50
    assert summary["ok"] == 50
    assert summary["errors"] == {}
    assert state.requests == 60
    latency = summary["latency_ms"]
    assert isinstance(latency, dict)
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    samples = summary["samples_s"]
    assert isinstance(samples, dict)
    assert len(samples["latency"]) == 50


async def test_loadgen_counts_wrong_bodies(upstream: tuple[str, UpstreamState]) -> None:
    base_url, _ = upstream
    settings = LoadSettings(
        url=base_url + CHAT.upstream_request.path,
        body=CHAT.upstream_request.body,
        headers={},
        rate=50.0,
        duration_s=0.2,
        warmup_s=0.0,
        expect_suffix=b"data: [DONE]",
    )
    summary = await run_open_loop(settings)
    assert summary["ok"] == 0
    assert summary["errors"] == {"unexpected_body_end": 10}


async def test_loadgen_counts_error_statuses(upstream: tuple[str, UpstreamState]) -> None:
    base_url, _ = upstream
    settings = LoadSettings(
        url=base_url + "/v1/unknown", body=b"{}", headers={}, rate=50.0, duration_s=0.2,
        warmup_s=0.0,
    )  # fmt: skip
    summary = await run_open_loop(settings)
    assert summary["errors"] == {"status_404": 10}
