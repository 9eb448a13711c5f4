"""Replacing image URLs in a canonical request with fetched bytes, for providers that need them."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import aiohttp

from smartflow.core.errors import InvalidRequest
from smartflow.core.types import ChatRequest, ImagePart, Message
from smartflow.transport.fetch import FetchedImage, ImageFetcher

__all__ = ["inline_image_urls"]

logger = logging.getLogger(__name__)

# Fetches of one request that run at once.
_CONCURRENT_FETCHES = 4


def _url_fields(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield (field path, URL) for every ``url`` string in a request body, in body order."""
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if key == "url" and isinstance(item, str):
                yield child, item
            else:
                yield from _url_fields(item, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _url_fields(item, f"{path}[{index}]")


def _image_urls(request: ChatRequest) -> list[tuple[int, int, str]]:
    found = []
    for number, message in enumerate(request.messages):
        for index, part in enumerate(message.content):
            if isinstance(part, ImagePart) and part.url is not None and part.data is None:
                found.append((number, index, part.url))
    return found


def _field_names(urls: list[str], request: ChatRequest, body: dict[str, Any]) -> dict[str, str]:
    """Name each URL by the first field of the caller's body that contains it.

    The canonical request numbers turns differently from some dialects (Anthropic's
    system prompt is no turn there), so the name comes from the body the caller sent.
    """
    names: dict[str, str] = {}
    expected = set(urls)
    for path, url in _url_fields(body):
        if url in expected and url not in names:
            names[url] = path
    for number, index, url in _image_urls(request):
        names.setdefault(url, f"messages[{number}].content[{index}]")
    return names


async def _fetch_all(
    fetcher: ImageFetcher,
    session: aiohttp.ClientSession,
    fields: dict[str, str],
    cache: dict[str, FetchedImage],
    request_id: str,
) -> None:
    """Fetch every URL of ``fields`` that is missing from ``cache`` into it.

    On the first failure the other fetches are cancelled and the failure is raised (the
    earliest in request order when several fetches failed).
    """
    pending = [url for url in fields if url not in cache]
    if not pending:
        return
    limit = asyncio.Semaphore(_CONCURRENT_FETCHES)

    async def fetch_one(url: str) -> None:
        async with limit:
            cache[url] = await fetcher.fetch(session, url, field=fields[url], request_id=request_id)

    tasks = [asyncio.create_task(fetch_one(url)) for url in pending]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def _with_bytes(message: Message, cache: dict[str, FetchedImage]) -> Message:
    content = []
    for part in message.content:
        if isinstance(part, ImagePart) and part.url is not None and part.data is None:
            image = cache[part.url]
            data = base64.b64encode(image.data).decode("ascii")
            part = ImagePart(data=data, media_type=image.media_type, detail=part.detail)
        content.append(part)
    return replace(message, content=content)


async def inline_image_urls(
    request: ChatRequest,
    *,
    body: dict[str, Any],
    fetcher: ImageFetcher,
    session: aiohttp.ClientSession,
    cache: dict[str, FetchedImage],
    request_id: str,
) -> ChatRequest:
    """Return a copy of ``request`` whose image URLs are replaced by the fetched images.

    ``request`` itself is left as it is, so a fallback to a provider that takes URLs
    still sends the URL. ``cache`` stores the request's fetched images by URL, so a
    retry or a second deployment fetches nothing again. ``body`` is the caller's body,
    used to name the field of a URL that fails. Raises InvalidRequest naming that field.
    """
    found = _image_urls(request)
    if not found:
        return request
    urls = list(dict.fromkeys(url for _, _, url in found))
    fields = _field_names(urls, request, body)
    limit = fetcher.settings.max_images
    if len(urls) > limit:
        field = fields[urls[limit]]
        raise InvalidRequest(
            f"The request has {len(urls)} different image URLs, and the gateway fetches at "
            f"most {limit} for one request (image_fetch.max_images). Send the image at "
            f"'{field}' and those after it as base64 data.",
            param=field,
        )
    await _fetch_all(fetcher, session, fields, cache, request_id)
    changed = {number for number, _, _ in found}
    messages = [
        _with_bytes(message, cache) if number in changed else message
        for number, message in enumerate(request.messages)
    ]
    logger.debug("request %s: %d image URL(s) replaced by bytes", request_id, len(urls))
    return replace(request, messages=messages)
