"""Pass-through of the paths the gateway does not serve itself, such as /v1/files.

The request goes to the real host with its method, path, query, headers and body as the
caller sent them, except the hop-by-hop headers, the credential (when an organisation
key replaces it) and the added hop header. A JSON body shaped like a chat request of the
host's dialect goes through the request policy first; other bodies pass unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from smartflow.auth.keys import Caller
from smartflow.core.errors import (
    InvalidRequest,
    RequestTimeout,
    RequestTooLarge,
    SmartflowError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from smartflow.gateway.ingress import Ingress
from smartflow.intercept.identity import InterceptIdentity
from smartflow.intercept.loop import HOP_HEADER
from smartflow.policy.engine import Evaluator
from smartflow.policy.hooks import request_context, rewrite_request_body

__all__ = ["Forwarder"]

logger = logging.getLogger(__name__)

# RFC 9110 section 7.6.1 connection-specific headers, plus those aiohttp sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key"})


class Forwarder:
    """Forward requests of one intercepted host to the real host."""

    def __init__(
        self,
        *,
        host: str,
        ingress: Ingress,
        identity: InterceptIdentity,
        session: Callable[[], aiohttp.ClientSession],
        policy: Callable[[], Evaluator | None],
        hop_id: str,
        site: str,
        max_body_bytes: int,
        body_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.ingress = ingress
        self.identity = identity
        self._session = session
        self._policy = policy
        self.hop_id = hop_id
        self.site = site
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    async def forward(
        self, request: web.Request, caller: Caller, request_id: str
    ) -> web.StreamResponse:
        """Send ``request`` to the real host and stream its response back.

        Raises:
            SmartflowError: the body is too large or late, policy blocks it, or the host
                cannot be reached.
        """
        body = await self._read_body(request)
        body = self._apply_policy(request, caller, body, request_id)
        url = f"https://{self.host}{request.rel_url.raw_path_qs}"
        headers = self._upstream_headers(request)
        try:
            upstream = await self._session().request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(
                f"{self.host} did not respond in time.", provider=self.host
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"Cannot reach {self.host}: {exc}.", provider=self.host
            ) from exc
        try:
            return await self._relay(request, upstream)
        finally:
            upstream.close()

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in _HOP_BY_HOP:
                response.headers.add(name, value)
        length = upstream.headers.get("content-length")
        if length is not None and length.isdigit():
            response.content_length = int(length)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            # The status line is already sent, so the cut-off body is all the caller gets.
            logger.warning("pass-through from %s broke off: %s", self.host, exc)
            return response
        await response.write_eof()
        return response

    def _upstream_headers(self, request: web.Request) -> dict[str, str]:
        key_header = self.identity.key_header.lower()
        headers = {}
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower in _CREDENTIAL_HEADERS or lower == key_header:
                continue
            headers[name] = value
        credential = self.identity.upstream_credentials(
            request.headers, "x-api-key" if self.ingress.name == "anthropic" else "authorization"
        )
        headers.update(credential.headers)
        headers[HOP_HEADER] = self.hop_id
        return headers

    async def _read_body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise _too_large(self.max_body_bytes)
        raw = bytearray()
        try:
            async with asyncio.timeout(self.body_timeout):
                async for chunk in request.content.iter_any():
                    raw += chunk
                    if len(raw) > self.max_body_bytes:
                        raise _too_large(self.max_body_bytes)
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {self.body_timeout:g} s."
            ) from None
        return bytes(raw)

    def _apply_policy(
        self, request: web.Request, caller: Caller, body: bytes, request_id: str
    ) -> bytes:
        evaluator = self._policy()
        if evaluator is None or not body or "json" not in request.content_type:
            return body
        data = _chat_body(body)
        if data is None:
            return body
        try:
            canonical = self.ingress.parse_request(data)
        except InvalidRequest:
            # Not a chat request after all, so the real host handles it as it sees fit.
            return body
        context = request_context(caller, canonical.model, request.headers, self.site)
        run = evaluator.evaluate_request(context, canonical, request_id=request_id)
        if not run.active or not run.request_changed:
            return body
        logger.info(
            "request %s: policy rewrote the pass-through body for %s%s",
            request_id,
            self.host,
            request.path,
        )
        return orjson.dumps(rewrite_request_body(run, self.ingress.name, data))


def _chat_body(body: bytes) -> dict[str, Any] | None:
    """Return the body as a dict if it is JSON with ``model`` and a ``messages`` list."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict) and isinstance(data.get("messages"), list) and "model" in data:
        return data
    return None


def _too_large(limit: int) -> SmartflowError:
    return RequestTooLarge(
        f"The request body is larger than the limit of {limit} bytes. Send a smaller request, "
        "or raise server.max_body_bytes."
    )
