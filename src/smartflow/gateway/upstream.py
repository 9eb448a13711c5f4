"""Sending a chat request upstream: retries, fallbacks and stream opening.

A request tries its deployments in order, each up to ``attempts_per_deployment``
times. A retryable failure (429, 5xx, 529, timeout, connection error) waits with
exponential backoff, or for the provider's ``retry-after`` when it sends one. When a
deployment's tries are spent, the next deployment is tried. A stream may still fail
over until its first byte has reached the caller. After that, an error is reported
inside the stream instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
from yarl import URL

from smartflow.config.schema import ImageFetchSettings, RetrySettings
from smartflow.core.errors import (
    InvalidRequest,
    MalformedUpstreamResponse,
    SmartflowError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from smartflow.core.stream import StreamEvent, StreamStart
from smartflow.core.types import ChatRequest
from smartflow.dialects.anthropic import requests as anthropic_requests
from smartflow.dialects.openai import requests as openai_requests
from smartflow.gateway.images import inline_image_urls
from smartflow.gateway.params import JsonToolEncoder, fit, json_tool_response
from smartflow.normalize import Change, Normalized, ProfileSet
from smartflow.providers.base import Deployment
from smartflow.transport.fetch import FetchedImage, ImageFetcher

__all__ = ["Attempt", "Dispatcher", "Encoder", "OpenStream"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PATCHERS = {"openai": openai_requests.patch_body, "anthropic": anthropic_requests.patch_body}
# The body fields each ingress dialect reads into the canonical request.
_PARSED_FIELDS = {
    "openai": openai_requests.PARSED_FIELDS,
    "anthropic": anthropic_requests.PARSED_FIELDS,
}
# The body fields that carry each canonical parameter, per pass-through dialect.
_PATCH_FIELDS = {
    "openai": openai_requests.PATCH_FIELDS,
    "anthropic": anthropic_requests.PATCH_FIELDS,
}


def _alters_body(
    change: Change, body: Mapping[str, Any], fields: Mapping[str, tuple[str, ...]]
) -> bool:
    """Tell whether ``change`` needs the pass-through body rewritten.

    A rename does not when the caller already sent the value under the target's name and
    under no other name for the same parameter, for example ``max_completion_tokens`` to OpenAI.
    """
    if change.rule == "pass":
        return False
    wire = change.wire
    if change.rule != "rename" or change.into is not None or wire is None or wire not in body:
        return True
    sent = body[wire]
    if type(sent) is not type(change.after) or sent != change.after:
        return True
    return any(name in body for name in fields.get(change.param, ()) if name != wire)


def _untranslated(exchange: Exchange, deployment: Deployment) -> list[Change]:
    """Record the caller's body fields that a translated request cannot carry.

    Such a field (for example ``logit_bias`` on the way to Claude) has no canonical form, so it is
    dropped; the record puts it in ``x-smartflow-params``. Strict mode rejects it instead.
    """
    parsed = _PARSED_FIELDS.get(exchange.dialect)
    if parsed is None:
        return []
    target, model = deployment.provider.kind, deployment.model
    dropped = []
    for name in exchange.body:
        if name in parsed:
            continue
        if exchange.strict_params:
            raise InvalidRequest(
                f"{name} cannot be sent to {model}: it has no equivalent on {target}. Strict "
                "mode changes nothing; remove it or turn strict mode off.",
                param=name,
            )
        reason = f"{name} has no equivalent on {target}, so it was not sent"
        dropped.append(Change(name[:64], "drop", "set", None, reason))
    return dropped


class Encoder(Protocol):
    def encode(self, event: StreamEvent) -> bytes: ...

    def encode_error(self, error: SmartflowError) -> bytes: ...


@dataclass(slots=True)
class Attempt:
    """One try at one deployment, as recorded for logs and usage."""

    deployment: str
    error: str | None = None
    status: int | None = None


@dataclass(slots=True)
class Exchange:
    """The caller's request as the dispatcher needs it, and the attempts made so far."""

    request_id: str
    dialect: str
    body: dict[str, Any]
    request: ChatRequest
    client_headers: Mapping[str, str]
    attempts: list[Attempt] = field(default_factory=list)
    strict_params: bool = False
    normalized: Normalized | None = None
    """The normalisation of the latest attempt, whose changes the response reports."""
    primary: Deployment | None = None
    fetched_images: dict[str, FetchedImage] = field(default_factory=dict)
    """Images fetched for this request by URL, reused by retries and fallbacks."""


@dataclass(slots=True)
class OpenStream:
    """An upstream stream whose first bytes for the caller are already at hand."""

    deployment: Deployment
    first: bytes
    rest: AsyncIterator[bytes]
    response: aiohttp.ClientResponse
    passthrough: bool = False
    """True when ``first`` and ``rest`` are the provider's own bytes."""

    def close(self) -> None:
        # Closing (not releasing) drops the connection, which cancels the upstream
        # generation when the stream is abandoned part-way.
        self.response.close()


def transport_error(
    exc: BaseException, *, target: str, provider: str, timeout: str, address: str | None = None
) -> UpstreamError:
    """Map a transport failure on the way to ``target``, the name callers see, to their error.

    ``timeout`` ends the timeout message, such as ``within 30 s``. The address that failed
    (``address``, else the one in ``exc``) goes to the log only, so callers do not learn
    the internal network.
    """
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout(f"{target} did not respond {timeout}.", provider=provider)
    if isinstance(exc, aiohttp.ClientConnectorError):
        where = address or f"{exc.host}:{exc.port}"
        logger.warning("cannot connect to %s at %s: %s", target, where, exc.os_error)
        return UpstreamUnavailable(
            f"Cannot connect to {target}: {exc.os_error.strerror or 'connection failed'}.",
            provider=provider,
        )
    return UpstreamUnavailable(
        f"The connection to {target} failed: {type(exc).__name__}.", provider=provider
    )


def _map_transport_error(
    exc: BaseException, deployment: Deployment, read_timeout: float
) -> UpstreamError:
    provider = deployment.provider.name
    return transport_error(
        exc, target=provider, provider=provider, timeout=f"within {read_timeout:g} s"
    )


class Dispatcher:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        retry: RetrySettings,
        *,
        read_timeout: float,
        profiles: ProfileSet | None = None,
        image_fetch: ImageFetchSettings | None = None,
    ) -> None:
        self.session = session
        self.retry = retry
        self.read_timeout = read_timeout
        self.profiles = profiles
        self.images = ImageFetcher(image_fetch or ImageFetchSettings())

    # --- the retry and fallback loop ------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        base = min(self.retry.backoff_initial_s * 2.0**attempt, self.retry.backoff_max_s)
        return float(base * (0.5 + random.random() / 2))

    async def _with_fallback(
        self,
        exchange: Exchange,
        deployments: list[Deployment],
        call: Callable[[Deployment], Awaitable[T]],
    ) -> T:
        last_error: UpstreamError | None = None
        tries = self.retry.attempts_per_deployment
        exchange.primary = deployments[0]
        for position, deployment in enumerate(deployments):
            for attempt in range(tries):
                record = Attempt(deployment.label)
                exchange.attempts.append(record)
                try:
                    return await call(deployment)
                except UpstreamError as exc:
                    record.error, record.status = exc.code, exc.upstream_status
                    if not exc.retryable:
                        raise
                    last_error = exc
                    has_next = position + 1 < len(deployments)
                    wait = (
                        exc.retry_after if exc.retry_after is not None else self._backoff(attempt)
                    )
                    if attempt + 1 >= tries or wait > self.retry.max_retry_after_s:
                        if has_next:
                            logger.warning(
                                "request %s: %s failed (%s); falling back to %s",
                                exchange.request_id,
                                deployment.label,
                                exc.message,
                                deployments[position + 1].label,
                            )
                        break
                    logger.warning(
                        "request %s: %s failed (%s); retry %d in %.2f s",
                        exchange.request_id,
                        deployment.label,
                        exc.message,
                        attempt + 1,
                        wait,
                    )
                    await asyncio.sleep(wait)
        assert last_error is not None
        raise last_error

    async def run_with_fallback(
        self,
        exchange: Exchange,
        deployments: list[Deployment],
        call: Callable[[Deployment], Awaitable[T]],
    ) -> T:
        """Run ``call`` on the deployments in order, with the retries and fallback of chat.

        For endpoints that send their own upstream requests, such as embeddings. ``call``
        raises an ``UpstreamError`` to have the deployment retried or skipped.
        """
        return await self._with_fallback(exchange, deployments, call)

    # --- one upstream call -----------------------------------------------------------

    async def _prepare(self, exchange: Exchange, deployment: Deployment) -> tuple[bytes, bool]:
        """Fetch image URLs for a provider that takes only image bytes, then build the body."""
        request = exchange.request
        if getattr(deployment.provider, "needs_image_bytes", False):
            request = await inline_image_urls(
                request,
                body=exchange.body,
                fetcher=self.images,
                session=self.session,
                cache=exchange.fetched_images,
                request_id=exchange.request_id,
            )
        return self._payload(exchange, deployment, request)

    def _payload(
        self, exchange: Exchange, deployment: Deployment, request: ChatRequest
    ) -> tuple[bytes, bool]:
        provider = deployment.provider
        normalized = fit(
            request,
            deployment,
            primary=exchange.primary or deployment,
            strict=exchange.strict_params,
            profiles=self.profiles,
        )
        exchange.normalized = normalized
        # A JSON schema served through a forced tool changes the request's shape,
        # which only the translated path can express.
        passthrough = provider.dialect == exchange.dialect and normalized.json_tool is None
        if passthrough:
            body = provider.passthrough_body(exchange.body, deployment.model)
            # Renamed and derived parameters change the body too: a rename moves a
            # value to another field, and a derived value lands in ``into``.
            fields = _PATCH_FIELDS[exchange.dialect]
            changed = {c.param for c in normalized.accounting if _alters_body(c, body, fields)}
            changed |= {c.into for c in normalized.accounting if c.into}
            if changed:
                patch = _PATCHERS[exchange.dialect]
                body = patch(body, normalized.request, changed, deployment.model)
        else:
            normalized.accounting.extend(_untranslated(exchange, deployment))
            body = provider.build_body(normalized.request, deployment.model)
        try:
            return orjson.dumps(body), passthrough
        except orjson.JSONEncodeError as exc:
            # orjson reads 1024 levels of nesting but writes only about 250.
            raise InvalidRequest(
                "The request body is nested too deeply to forward (more than about 250 levels). "
                "Flatten the deepest object or schema."
            ) from exc

    async def _post(
        self, exchange: Exchange, deployment: Deployment, payload: bytes, *, stream: bool
    ) -> aiohttp.ClientResponse:
        provider = deployment.provider
        prepare = getattr(provider, "prepare_auth", None)
        if prepare is not None:
            # Token exchanges (Vertex AI service accounts) run off the event loop here.
            await prepare()
        target = provider.chat_target(
            deployment.model, stream=stream, client_headers=exchange.client_headers
        )
        url: str | URL = target.url
        sign = getattr(provider, "sign", None)
        if sign is not None:
            # SigV4 covers the body, so the target can only be signed once it is serialised.
            target = sign(target, payload)
            # Send the path exactly as signed: yarl would decode "%3A" in a str URL.
            url = URL(target.url, encoded=True)
        try:
            response = await self.session.post(url, data=payload, headers=target.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_transport_error(exc, deployment, self.read_timeout) from exc
        if response.status >= 400:
            try:
                body = await response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                response.close()
                raise _map_transport_error(exc, deployment, self.read_timeout) from exc
            response.release()
            raise provider.parse_error(response.status, body, response.headers)
        return response

    async def complete(
        self, exchange: Exchange, deployments: list[Deployment], render: Callable[[Any], bytes]
    ) -> tuple[bytes, Deployment]:
        """Return the caller's response body and the deployment that served it.

        ``render`` turns a canonical response into the caller's dialect; a pass-through
        response is returned byte for byte.
        """

        async def call(deployment: Deployment) -> tuple[bytes, Deployment]:
            payload, passthrough = await self._prepare(exchange, deployment)
            response = await self._post(exchange, deployment, payload, stream=False)
            try:
                body = await response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _map_transport_error(exc, deployment, self.read_timeout) from exc
            finally:
                response.release()
            if passthrough:
                return body, deployment
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise MalformedUpstreamResponse(
                    f"{deployment.provider.name} returned a body that is not JSON.",
                    provider=deployment.provider.name,
                ) from exc
            parsed = deployment.provider.parse_response(data)
            if not parsed.model:
                # Some providers (Cohere) do not name the model in their responses.
                parsed.model = deployment.model
            json_tool = exchange.normalized.json_tool if exchange.normalized else None
            if json_tool is not None:
                parsed = json_tool_response(parsed, json_tool)
            return render(parsed), deployment

        return await self._with_fallback(exchange, deployments, call)

    async def open_stream(
        self,
        exchange: Exchange,
        deployments: list[Deployment],
        make_encoder: Callable[[], Encoder],
    ) -> OpenStream:
        """Open a stream and read up to its first bytes for the caller."""

        async def call(deployment: Deployment) -> OpenStream:
            payload, passthrough = await self._prepare(exchange, deployment)
            response = await self._post(exchange, deployment, payload, stream=True)
            if passthrough:
                chunks = self._raw_chunks(response, deployment)
            else:
                encoder = make_encoder()
                json_tool = exchange.normalized.json_tool if exchange.normalized else None
                if json_tool is not None:
                    encoder = JsonToolEncoder(encoder, json_tool)
                chunks = self._translated_chunks(response, deployment, encoder)
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                response.close()
                raise UpstreamUnavailable(
                    f"{deployment.provider.name} closed the stream before sending anything.",
                    provider=deployment.provider.name,
                ) from None
            except BaseException:
                response.close()
                raise
            if passthrough and first.startswith(b"event: error"):
                response.close()
                self._raise_stream_error(first, deployment)
            return OpenStream(deployment, first, chunks, response, passthrough)

        return await self._with_fallback(exchange, deployments, call)

    def _raise_stream_error(self, chunk: bytes, deployment: Deployment) -> None:
        parser = deployment.provider.frame_parser()
        for name, data in parser.feed(chunk) + parser.close():
            # The provider's own decoder turns its error event into the matching error.
            deployment.provider.stream_decoder().feed(data, name)
        raise UpstreamUnavailable(
            f"{deployment.provider.name} sent an error event.", provider=deployment.provider.name
        )

    async def _raw_chunks(
        self, response: aiohttp.ClientResponse, deployment: Deployment
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_transport_error(exc, deployment, self.read_timeout) from exc

    async def _translated_chunks(
        self, response: aiohttp.ClientResponse, deployment: Deployment, encoder: Encoder
    ) -> AsyncIterator[bytes]:
        parser = deployment.provider.frame_parser()
        decoder = deployment.provider.stream_decoder()
        try:
            async for chunk in response.content.iter_any():
                out = b""
                for name, data in parser.feed(chunk):
                    for event in decoder.feed(data, name):
                        if type(event) is StreamStart and not event.model:
                            event.model = deployment.model
                        out += encoder.encode(event)
                if out:
                    yield out
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_transport_error(exc, deployment, self.read_timeout) from exc
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise MalformedUpstreamResponse(
                f"{deployment.provider.name} sent a stream event that could not be read: {exc}.",
                provider=deployment.provider.name,
            ) from exc
        out = b""
        for name, data in parser.close():
            for event in decoder.feed(data, name):
                out += encoder.encode(event)
        for event in decoder.close():
            out += encoder.encode(event)
        if out:
            yield out
