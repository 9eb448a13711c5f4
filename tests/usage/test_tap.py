"""Usage read from real simulator responses, on pass-through and translated paths."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from smartflow.core.stream import StreamEvent
from smartflow.dialects.openai import responses as openai_responses
from smartflow.dialects.openai.streaming import StreamEncoder as OpenAIEncoder
from smartflow.gateway.ingress import OPENAI
from smartflow.providers.anthropic import AnthropicProvider
from smartflow.providers.base import Deployment, Secret
from smartflow.providers.openai import OpenAIProvider
from smartflow.sim.anthropic import AnthropicSimulator
from smartflow.sim.openai import OpenAISimulator
from smartflow.usage import tap as tap_module
from smartflow.usage.builder import CHARS_PER_TOKEN, UsageBuilder
from smartflow.usage.prices import PriceCatalog
from smartflow.usage.tap import (
    ObservingEncoder,
    PassthroughTap,
    observe_render,
    record_passthrough_body,
)

KEY = "sim-key"
PROMPT = "Tell me about usage accounting in three short sentences, please."


@pytest.fixture
async def openai_sim() -> AsyncIterator[str]:
    sim = OpenAISimulator(api_keys=[KEY])
    url = await sim.start()
    try:
        yield url
    finally:
        await sim.stop()


@pytest.fixture
async def anthropic_sim() -> AsyncIterator[str]:
    sim = AnthropicSimulator(api_keys=[KEY], chunk_delay=0.01)
    url = await sim.start()
    try:
        yield url
    finally:
        await sim.stop()


def _builder(dialect: str) -> UsageBuilder:
    return UsageBuilder(request_id="req_tap", dialect=dialect, instance="gw", site="local")


def _sse_payloads(raw: bytes) -> list[dict[str, Any]]:
    """Parse ``data:`` lines independently of the gateway's SSE parser."""
    payloads = []
    for line in raw.decode().splitlines():
        if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
            payloads.append(orjson.loads(line[5:].strip()))
    return payloads


async def _openai_stream(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    return await http.post(url + "/v1/chat/completions", json=body, headers=headers)


async def _anthropic_stream(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
    }
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    return await http.post(url + "/v1/messages", json=body, headers=headers)


async def test_openai_passthrough_stream(openai_sim: str) -> None:
    provider = OpenAIProvider("openai-main", api_key=Secret(KEY), base_url=openai_sim + "/v1")
    builder = _builder("openai")
    builder.set_deployment(Deployment("gpt-4o", provider, "gpt-4o"))
    tap = PassthroughTap(builder, provider)
    async with aiohttp.ClientSession() as http:
        response = await _openai_stream(http, openai_sim)
        raw = b"".join([chunk async for chunk in tap.wrap(response.content.iter_any())])
        response.release()
    event = builder.finish(200, PriceCatalog.default())

    usage = next(p["usage"] for p in _sse_payloads(raw) if p.get("usage"))
    assert not tap.stopped
    assert event.usage_source == "provider"
    assert event.tokens.input == usage["prompt_tokens"]
    assert event.tokens.output == usage["completion_tokens"]
    assert event.tokens.input > 0
    assert event.finish_reason == "stop"
    assert event.model_served == _sse_payloads(raw)[0]["model"]
    assert event.cost_usd is not None


async def test_anthropic_passthrough_stream(anthropic_sim: str) -> None:
    provider = AnthropicProvider("claude", api_key=Secret(KEY), base_url=anthropic_sim)
    builder = _builder("anthropic")
    builder.set_deployment(Deployment("claude-sonnet-4-5", provider, "claude-sonnet-4-5"))
    tap = PassthroughTap(builder, provider)
    async with aiohttp.ClientSession() as http:
        response = await _anthropic_stream(http, anthropic_sim)
        raw = b"".join([chunk async for chunk in tap.wrap(response.content.iter_any())])
        response.release()
    event = builder.finish(200)

    payloads = _sse_payloads(raw)
    start = next(p for p in payloads if p["type"] == "message_start")
    delta = next(p for p in payloads if p["type"] == "message_delta")
    assert event.usage_source == "provider"
    assert event.tokens.input == start["message"]["usage"]["input_tokens"]
    assert event.tokens.output == delta["usage"]["output_tokens"]
    assert event.tokens.output > 1


async def test_stream_cut_part_way_is_partial(anthropic_sim: str) -> None:
    provider = AnthropicProvider("claude", api_key=Secret(KEY), base_url=anthropic_sim)
    builder = _builder("anthropic")
    builder.set_deployment(Deployment("claude-sonnet-4-5", provider, "claude-sonnet-4-5"))
    tap = PassthroughTap(builder, provider)
    received = b""
    async with aiohttp.ClientSession() as http:
        response = await _anthropic_stream(http, anthropic_sim)
        async for chunk in tap.wrap(response.content.iter_any()):
            received += chunk
            if b"content_block_delta" in received:
                break  # the caller goes away after the first text
        response.close()
    builder.mark_client_disconnected()
    event = builder.finish(200)

    start = next(p for p in _sse_payloads(received) if p["type"] == "message_start")
    assert b"message_delta" not in received
    assert event.usage_source == "partial"
    assert event.tokens.input == start["message"]["usage"]["input_tokens"]
    assert event.tokens.output >= 1
    assert event.status == 499


async def test_passthrough_body(openai_sim: str) -> None:
    provider = OpenAIProvider("openai-main", api_key=Secret(KEY), base_url=openai_sim + "/v1")
    builder = _builder("openai")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            openai_sim + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
        ) as response:
            raw = await response.read()
    assert record_passthrough_body(builder, provider, raw)
    event = builder.finish(200)
    usage = orjson.loads(raw)["usage"]
    assert event.usage_source == "provider"
    assert event.tokens.input == usage["prompt_tokens"]
    assert event.tokens.output == usage["completion_tokens"]


async def test_translated_stream_through_encoder(anthropic_sim: str) -> None:
    # Anthropic upstream and OpenAI caller, so the encoder receives canonical events.
    provider = AnthropicProvider("claude", api_key=Secret(KEY), base_url=anthropic_sim)
    builder = _builder("openai")
    observed = ObservingEncoder(OpenAIEncoder("claude-sonnet-4-5", include_usage=False), builder)
    plain = OpenAIEncoder("claude-sonnet-4-5", include_usage=False)
    parser, decoder = provider.frame_parser(), provider.stream_decoder()
    events: list[StreamEvent] = []
    async with aiohttp.ClientSession() as http:
        response = await _anthropic_stream(http, anthropic_sim)
        async for chunk in response.content.iter_any():
            for name, data in parser.feed(chunk):
                events.extend(decoder.feed(data, name))
        response.release()
    out_observed = b"".join(observed.encode(e) for e in events)
    out_plain = b"".join(plain.encode(e) for e in events)
    event = builder.finish(200)

    assert out_observed == out_plain
    assert b'"usage"' not in out_observed  # the caller did not ask for usage
    assert event.usage_source == "provider"
    assert event.tokens.input > 0
    assert event.tokens.output > 1


async def test_translated_response_through_render(anthropic_sim: str) -> None:
    provider = AnthropicProvider("claude", api_key=Secret(KEY), base_url=anthropic_sim)
    builder = _builder("openai")
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as http:
        async with http.post(anthropic_sim + "/v1/messages", json=body, headers=headers) as resp:
            data = await resp.json()
    render = observe_render(OPENAI.render_response, builder)
    rendered = orjson.loads(render(provider.parse_response(data)))
    event = builder.finish(200)

    assert rendered["usage"]["prompt_tokens"] == data["usage"]["input_tokens"]
    assert event.tokens.input == data["usage"]["input_tokens"]
    assert event.tokens.output == data["usage"]["output_tokens"]
    assert event.model_served == data["model"]


async def test_tap_never_breaks_the_stream() -> None:
    provider = OpenAIProvider("openai-main", api_key=Secret(KEY), base_url="http://127.0.0.1:9/v1")
    builder = _builder("openai")
    tap = PassthroughTap(builder, provider)
    chunks = [b"data: {not json}\n\n", b'data: {"choices": []}\n\n', b"data: [DONE]\n\n"]

    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    passed = [chunk async for chunk in tap.wrap(source())]
    assert passed == chunks
    assert tap.stopped
    assert builder.finish(200).usage_source == "none"


def test_unreadable_body_is_not_recorded() -> None:
    provider = OpenAIProvider("openai-main", api_key=Secret(KEY), base_url="http://127.0.0.1:9/v1")
    builder = _builder("openai")
    assert not record_passthrough_body(builder, provider, b"<html>bad gateway</html>")
    assert not record_passthrough_body(builder, provider, b"[1, 2]")
    assert builder.finish(502).usage_source == "none"


def _openai_sse(texts: list[str], *, usage: dict[str, int] | None) -> list[bytes]:
    """Build an OpenAI chat.completion.chunk stream, one event per chunk."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06"}
    chunks = [
        b"data: "
        + orjson.dumps({**base, "choices": [{"index": 0, "delta": {"content": text}}]})
        + b"\n\n"
        for text in texts
    ]
    finish = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    chunks.append(b"data: " + orjson.dumps(finish) + b"\n\n")
    if usage is not None:
        chunks.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def _tapped(chunks: list[bytes]) -> tuple[UsageBuilder, PassthroughTap]:
    provider = OpenAIProvider("openai-main", api_key=Secret(KEY), base_url="http://127.0.0.1:9/v1")
    builder = _builder("openai")
    builder.set_deployment(Deployment("gpt-4o", provider, "gpt-4o"))
    tap = PassthroughTap(builder, provider)
    for chunk in chunks:
        tap.feed(chunk)
    return builder, tap


@pytest.mark.parametrize("words", [3, 40_000])
def test_passthrough_usage_from_stream_end(words: int) -> None:
    # 40,000 words are about 3.5 MB of events, so most are decoded while the stream runs.
    usage = {"prompt_tokens": 11, "completion_tokens": words, "total_tokens": 11 + words}
    builder, tap = _tapped(_openai_sse([f" w{i}" for i in range(words)], usage=usage))
    event = builder.finish(200, PriceCatalog.default())
    assert not tap.stopped
    assert event.usage_source == "provider"
    assert event.tokens.input == 11
    assert event.tokens.output == words
    assert event.finish_reason == "length"
    assert event.model_served == "gpt-4o-2024-08-06"


@pytest.mark.parametrize("words", [3, 40_000])
def test_passthrough_without_usage_counts_all_text(words: int) -> None:
    texts = [f" word{i}" for i in range(words)]
    builder, _ = _tapped(_openai_sse(texts, usage=None))
    event = builder.finish(200)
    assert event.usage_source == "estimated"
    assert event.tokens.output == -(-len("".join(texts)) // CHARS_PER_TOKEN)
    assert event.finish_reason == "length"


def test_passthrough_stream_cut_counts_all_text() -> None:
    texts = [f" word{i}" for i in range(30_000)]
    chunks = _openai_sse(texts, usage={"prompt_tokens": 5, "completion_tokens": 1})
    # The caller leaves before the last content event: no finish, no usage, no [DONE].
    builder, _ = _tapped(chunks[: len(texts) - 1])
    builder.mark_client_disconnected()
    event = builder.finish(200)
    assert event.usage_source == "estimated"
    assert event.tokens.output == -(-len("".join(texts[:-1])) // CHARS_PER_TOKEN)
    assert event.status == 499


def test_passthrough_events_split_across_chunks() -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}
    raw = b"".join(_openai_sse([" a", " b", " c", " d", " e", " f"], usage=usage))
    builder, _ = _tapped([raw[i : i + 5] for i in range(0, len(raw), 5)])
    event = builder.finish(200)
    assert event.usage_source == "provider"
    assert (event.tokens.input, event.tokens.output) == (7, 9)


# --- the readers of final usage agree with the full parsers --------------------------------


class _FullOpenAI(OpenAIProvider):
    dialect = None  # no reader for this dialect: the tap decodes with the provider's parser


class _FullAnthropic(AnthropicProvider):
    dialect = None


_OPENAI_USAGE = {
    "prompt_tokens": 30,
    "completion_tokens": 12,
    "prompt_tokens_details": {"cached_tokens": 20, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 5},
}
_ANTHROPIC_START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "model": "claude-sonnet-4-5-20250929",
        "usage": {"input_tokens": 9, "cache_read_input_tokens": 40, "output_tokens": 1},
    },
}


def _sse(events: list[tuple[str | None, Any]]) -> bytes:
    blocks = []
    for name, data in events:
        head = f"event: {name}\n".encode() if name else b""
        payload = data if isinstance(data, bytes) else orjson.dumps(data)
        blocks.append(head + b"data: " + payload + b"\n\n")
    return b"".join(blocks)


def _anthropic_sse(stop_reason: str, usage: dict[str, Any]) -> bytes:
    return _sse(
        [
            ("message_start", _ANTHROPIC_START),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "Hi there"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": stop_reason}, "usage": usage}),
            ("message_stop", {"type": "message_stop"}),
        ]
    )  # fmt: skip


_STREAMS = {
    "openai usage": (
        "openai",
        b"".join(_openai_sse(["a", "b", "c"], usage=_OPENAI_USAGE)),
    ),
    "openai tool calls, second choice": (
        "openai",
        _sse(
            [
                (None, {"model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {}}]}),
                (None, {"model": "gpt-4o-mini", "choices": [
                    {"index": 0, "delta": {}, "finish_reason": "tool_calls"},
                    {"index": 1, "delta": {}, "finish_reason": "length"}]}),
                (None, {"model": "gpt-4o-mini", "choices": [], "usage": _OPENAI_USAGE}),
                (None, b"[DONE]"),
            ]
        ),
    ),
    "openai without usage": ("openai", b"".join(_openai_sse(["a", "b"], usage=None))),
    "openai error at the end": (
        "openai",
        _sse([(None, {"model": "m", "choices": []}), (None, {"error": {"message": "x"}})]),
    ),
    "anthropic max tokens": ("anthropic", _anthropic_sse("max_tokens", {"output_tokens": 77})),
    "anthropic thinking and cache writes": (
        "anthropic",
        _anthropic_sse(
            "end_turn",
            {"input_tokens": 3, "cache_creation_input_tokens": 8, "output_tokens": 20,
             "output_tokens_details": {"thinking_tokens": 6}},
        ),
    ),
    "anthropic refusal": ("anthropic", _anthropic_sse("refusal", {"output_tokens": 2})),
}  # fmt: skip


_PROVIDERS: dict[str, tuple[type, type]] = {
    "openai": (OpenAIProvider, _FullOpenAI),
    "anthropic": (AnthropicProvider, _FullAnthropic),
}


def _summary(dialect: str, provider_class: type, raw: bytes, *, stream: bool) -> tuple[Any, ...]:
    provider = provider_class("p", api_key=Secret(KEY), base_url="http://127.0.0.1:9")
    builder = _builder(dialect)
    builder.set_deployment(Deployment("m", provider, "m"))
    if stream:
        tap = PassthroughTap(builder, provider)
        for start in range(0, len(raw), 7):
            tap.feed(raw[start : start + 7])
    else:
        record_passthrough_body(builder, provider, raw)
    event = builder.finish(200)
    return event.model_served, event.finish_reason, event.usage_source, event.tokens


@pytest.mark.parametrize("name", sorted(_STREAMS))
def test_stream_readers_match_the_decoders(name: str) -> None:
    dialect, raw = _STREAMS[name]
    fast, full = _PROVIDERS[dialect]
    assert _summary(dialect, fast, raw, stream=True) == _summary(dialect, full, raw, stream=True)


_BODIES = {
    "openai": ("openai", {"model": "gpt-4o-2024-08-06", "usage": _OPENAI_USAGE, "choices": [
        {"index": 0, "finish_reason": "length", "message": {"content": "hi"}}]}),
    "openai refusal": ("openai", {"model": "gpt-4o", "usage": _OPENAI_USAGE, "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"content": None, "refusal": "no"}}]}),
    "openai without choices": ("openai", {"model": "gpt-4o", "choices": []}),
    "openai without usage": ("openai", {"model": "gpt-4o", "choices": [{"message": {}}]}),
    "anthropic": ("anthropic", {"model": "claude-x", "content": [], "stop_reason": "tool_use",
                                "usage": {"input_tokens": 5, "cache_creation_input_tokens": 2,
                                          "output_tokens": 4}}),
    "anthropic without content": ("anthropic", {"model": "claude-x", "usage": {}}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(_BODIES))
def test_body_readers_match_the_parsers(name: str) -> None:
    dialect, body = _BODIES[name]
    raw = orjson.dumps(body)
    fast, full = _PROVIDERS[dialect]
    assert _summary(dialect, fast, raw, stream=False) == _summary(dialect, full, raw, stream=False)


_TAILS = {
    "one line each": b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n',
    "no space after data": b'data:{"a":1}\n\ndata: [DONE]\n\n',
    "a line before the data line": b'data: {"a":1}\n\nid: 7\ndata: {"b":2}\n\n',
    "two data lines": b"data: x\ndata: y\n\ndata: [DONE]\n\n",
    "extra blank line": b"data: x\n\n\ndata: [DONE]\n\n",
    "cut mid-event": b"data: x\n\ndata: [DO",
    "empty payload": b"data: \n\ndata: [DONE]\n\n",
    "payload starting with data": b"data: data: x\n\n",
    "no events": b"",
}


def _payloads_one_by_one(tail: bytes) -> list[bytes | None]:
    return [tap_module._event_data(block) for block in tail.split(b"\n\n") if block]


@pytest.mark.parametrize("name", sorted(_TAILS))
def test_data_lines_match_event_data(name: str) -> None:
    tail = _TAILS[name]
    payloads = tap_module._data_lines(tail)
    if payloads is not None:
        assert payloads == _payloads_one_by_one(tail)
    if name in ("one line each", "empty payload", "payload starting with data"):
        assert payloads is not None  # the single-line events take the shortcut


@pytest.mark.parametrize(
    "raw",
    [
        _OPENAI_USAGE,
        {"prompt_tokens": 5, "completion_tokens": 7},
        {"prompt_tokens": None, "completion_tokens": 3, "prompt_tokens_details": None},
        {"prompt_tokens": 1, "completion_tokens_details": {"reasoning_tokens": None}},
        {},
        None,
    ],
)
def test_openai_usage_matches_the_dialect(raw: dict[str, Any] | None) -> None:
    assert tap_module._openai_usage(raw) == openai_responses.parse_usage(raw)


def test_stream_reader_with_event_lines_matches_the_decoder() -> None:
    # Events with an id line before their data line take the general path of the reader.
    raw = b"".join(_openai_sse(["a", "b"], usage=_OPENAI_USAGE)).replace(
        b"data: {", b"id: 1\ndata: {"
    )
    fast, full = _PROVIDERS["openai"]
    assert _summary("openai", fast, raw, stream=True) == _summary("openai", full, raw, stream=True)
