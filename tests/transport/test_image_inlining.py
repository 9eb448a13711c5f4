"""Replacing image URLs in a canonical request with fetched bytes (gateway/images.py).

Every test fetches, so every test runs in a loopback-only network namespace (see
netns.py), where 10.0.0.1 is a loopback address too.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from smartflow.config.schema import ImageFetchSettings
from smartflow.core.errors import InvalidRequest
from smartflow.core.types import ChatRequest, ImagePart
from smartflow.dialects.anthropic import requests as anthropic_requests
from smartflow.dialects.openai import requests as openai_requests
from smartflow.gateway.images import inline_image_urls
from smartflow.transport.fetch import FetchedImage, ImageFetcher
from smartflow.transport.http import HTTPSettings, create_session
from tests.transport.imageserver import PNG, ImageServer
from tests.transport.netns import isolated


@asynccontextmanager
async def gateway_session() -> AsyncIterator[aiohttp.ClientSession]:
    """Yield a session built like the gateway's own."""
    session = create_session(HTTPSettings(connect_timeout=2.0, read_timeout=5.0))
    try:
        yield session
    finally:
        await session.close()


def fetcher(**settings: Any) -> ImageFetcher:
    return ImageFetcher(ImageFetchSettings(**settings))


def _openai_request(*urls: str) -> tuple[dict[str, Any], ChatRequest]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "Compare these."}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    body = {
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": parts},
        ],
    }
    return body, openai_requests.parse_request(body)


@isolated
async def test_inline_replaces_urls_in_copy() -> None:
    images = fetcher(allow_cidrs=["127.0.0.0/8"])
    async with ImageServer() as server, gateway_session() as session:
        png, jpeg = f"{server.url}/cat.png", f"{server.url}/mislabelled.png"
        body, request = _openai_request(png, jpeg, png)
        cache: dict[str, FetchedImage] = {}
        inlined = await inline_image_urls(
            request, body=body, fetcher=images, session=session, cache=cache, request_id="r1"
        )
        parts = inlined.messages[1].content
        assert [(p.media_type, p.url) for p in parts[1:] if isinstance(p, ImagePart)] == [
            ("image/png", None),
            ("image/jpeg", None),
            ("image/png", None),
        ]
        first = parts[1]
        assert isinstance(first, ImagePart)
        assert first.data == base64.b64encode(PNG).decode()
        # The caller's request keeps its URLs, for a fallback to a provider that takes them.
        original = request.messages[1].content[1]
        assert isinstance(original, ImagePart)
        assert original.url == png
        assert original.data is None
        # One fetch per URL, and none again with the request's cache.
        assert sorted(hit.path_qs for hit in server.hits) == ["/cat.png", "/mislabelled.png"]
        await inline_image_urls(
            request, body=body, fetcher=images, session=session, cache=cache, request_id="r1"
        )
        assert len(server.hits) == 2


@isolated
async def test_inline_names_caller_field() -> None:
    images = fetcher(max_images=2)
    async with ImageServer() as server, gateway_session() as session:
        url = f"{server.url}/cat.png"
        body, request = _openai_request(url)
        try:
            await inline_image_urls(
                request, body=body, fetcher=images, session=session, cache={}, request_id="r2"
            )
        except InvalidRequest as exc:
            assert exc.param == "messages[1].content[1].image_url.url"
        else:
            raise AssertionError("the loopback URL was fetched")

        # Anthropic's system prompt is no turn of the body, so the canonical turn
        # numbers differ from the caller's; the error names the caller's field.
        anthropic_body = {
            "model": "claude",
            "max_tokens": 10,
            "system": "Be brief.",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image", "source": {"type": "url", "url": url}},
                    ],
                }
            ],
        }
        anthropic_request = anthropic_requests.parse_request(anthropic_body)
        try:
            await inline_image_urls(
                anthropic_request,
                body=anthropic_body,
                fetcher=images,
                session=session,
                cache={},
                request_id="r3",
            )
        except InvalidRequest as exc:
            assert exc.param == "messages[0].content[1].source.url"
        else:
            raise AssertionError("the loopback URL was fetched")

        body, request = _openai_request(*(f"{server.url}/cat.png?n={n}" for n in range(3)))
        try:
            await inline_image_urls(
                request, body=body, fetcher=images, session=session, cache={}, request_id="r4"
            )
        except InvalidRequest as exc:
            assert exc.param == "messages[1].content[3].image_url.url"
            assert "3 different image URLs" in exc.message
            assert "at most 2" in exc.message
        else:
            raise AssertionError("more than max_images URLs were accepted")
        assert server.hits == []


@isolated
async def test_inline_stops_at_first_failure() -> None:
    images = fetcher(allow_hosts=["localhost"], timeout_s=20)
    async with ImageServer() as server, gateway_session() as session:
        origin = f"http://localhost:{server.url.rsplit(':', 1)[1]}"
        # The second URL fails only once the first fetch is waiting on the server.
        slow = f"{origin}/slow.png"
        failing = f"{origin}/redirect-after-slow?to=http://10.0.0.1:9/cat.png"
        body, request = _openai_request(slow, failing)
        started = time.monotonic()
        try:
            await inline_image_urls(
                request, body=body, fetcher=images, session=session, cache={}, request_id="r5"
            )
        except InvalidRequest as exc:
            assert exc.param == "messages[1].content[2].image_url.url"
            assert "a redirect leads to a private address" in exc.message
        else:
            raise AssertionError("the redirect to a private address was followed")
        # The slow fetch was cancelled, not waited for (it would take 20 s).
        assert time.monotonic() - started < 5
        assert server.slow_started.is_set()
