"""Image fetching for providers that take image bytes, guarded against server-side request forgery.

A fetch resolves the host first and checks every address it resolves to (see
``transport.addresses``). It then connects to a checked address: the request URL
carries that address, and the host name goes in the Host header and in TLS (SNI and
the certificate check). So no second DNS lookup can change the target between check
and connect. Redirects are followed one hop at a time, and each hop is checked again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from smartflow.config.schema import ImageFetchSettings
from smartflow.core.errors import InvalidRequest
from smartflow.transport.addresses import AddressPolicy, IPAddress

__all__ = [
    "IMAGE_MEDIA_TYPES",
    "UNTRACED",
    "FetchedImage",
    "ImageFetcher",
    "Resolver",
    "resolve_host",
    "sniff_image_type",
]

logger = logging.getLogger(__name__)

IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_MEDIA_TYPE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_ACCEPT = ", ".join(IMAGE_MEDIA_TYPES)
_CHUNK_BYTES = 64 * 1024

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
"""Resolves a host name and port to every address the name has."""


@dataclass(slots=True, frozen=True)
class FetchedImage:
    data: bytes
    media_type: str
    """The type found in the bytes themselves, one of ``IMAGE_MEDIA_TYPES``."""


UNTRACED = object()
"""The ``trace_request_ctx`` of image fetches: tracing hooks on a shared session leave
such requests alone, so no trace context goes to an image host."""


class _Rejected(Exception):
    """A rejected or failed fetch: the reason for the caller, and the host for the log."""

    def __init__(self, reason: str, host: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.host = host


def sniff_image_type(data: bytes) -> str | None:
    """Return the media type that the magic bytes of ``data`` show, or None if not an image
    type in ``IMAGE_MEDIA_TYPES``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    return None


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Resolve ``host`` with the system resolver to every TCP address it has, in its order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # An IPv6 link-local result may carry a zone such as "%eth0".
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _parse_url(text: str) -> URL:
    try:
        url = URL(text)
    except (ValueError, TypeError) as exc:
        raise _Rejected("it is not a valid URL") from exc
    if url.scheme not in ("http", "https"):
        raise _Rejected(f"only http and https URLs are fetched, not {url.scheme or 'no'} scheme")
    if not url.raw_host:
        raise _Rejected("the URL has no host")
    if url.raw_user is not None or url.raw_password is not None:
        raise _Rejected("URLs with a user name or password are not fetched", url.raw_host)
    return url.with_fragment(None)


def _media_type(response: aiohttp.ClientResponse) -> str:
    header = response.headers.get("Content-Type", "")
    media_type = header.split(";", 1)[0].strip().lower()
    return _MEDIA_TYPE_ALIASES.get(media_type, media_type)


class ImageFetcher:
    """Fetches image URLs on the gateway's HTTP session, within ``ImageFetchSettings``.

    ``resolver`` replaces the system resolver, for tests and for a custom DNS setup.
    """

    def __init__(self, settings: ImageFetchSettings, *, resolver: Resolver | None = None) -> None:
        self.settings = settings
        self.policy = AddressPolicy(settings.allow_hosts, settings.allow_cidrs)
        self._resolve = resolver or resolve_host

    async def fetch(
        self, session: aiohttp.ClientSession, url: str, *, field: str, request_id: str
    ) -> FetchedImage:
        """Fetch the image at ``url``, which the request carries at ``field``.

        Raises InvalidRequest naming ``field`` when the URL is rejected or the fetch fails.
        """
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                return await self._follow(session, url)
        except _Rejected as exc:
            reason, host = exc.reason, exc.host
        except TimeoutError:
            reason = f"fetching it took longer than the limit of {self.settings.timeout_s:g} s"
            host = None
        if host is None:
            try:
                host = URL(url).raw_host
            except (ValueError, TypeError):
                host = None
        # The URL's path and query may carry access tokens, so only the host is logged.
        logger.warning(
            "request %s: image at %s not fetched from host %s: %s",
            request_id,
            field,
            host or "-",
            reason,
        )
        raise InvalidRequest(
            f"The image URL at '{field}' could not be used: {reason}. Send the image as "
            "base64 data instead (a data: URL or a base64 source).",
            param=field,
        )

    async def _follow(self, session: aiohttp.ClientSession, text: str) -> FetchedImage:
        url = _parse_url(text)
        for hop in range(self.settings.max_redirects + 1):
            response = await self._get(session, url, redirected=hop > 0)
            if response.status not in _REDIRECT_STATUSES:
                return await self._read(response, url)
            location = response.headers.get("Location")
            response.release()
            if not location:
                raise _Rejected(
                    f"the server sent HTTP {response.status} with no Location", url.raw_host
                )
            try:
                target = str(url.join(URL(location)))
            except (ValueError, TypeError):
                raise _Rejected("a redirect has an invalid Location", url.raw_host) from None
            try:
                url = _parse_url(target)
            except _Rejected as exc:
                raise _Rejected(f"a redirect was rejected: {exc.reason}", exc.host) from None
        raise _Rejected(f"it redirects more than {self.settings.max_redirects} times", url.raw_host)

    async def _checked_addresses(self, url: URL, *, redirected: bool) -> list[IPAddress]:
        host = url.raw_host or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await self._resolve(host, port)
        except (OSError, ValueError, UnicodeError) as exc:
            raise _Rejected(f"its host name could not be resolved ({exc})", host) from exc
        if not addresses:
            raise _Rejected("its host name resolved to no address", host)
        for address in addresses:
            blocked = self.policy.check(host, address)
            if blocked is not None:
                # The caller learns the kind of address but not the address itself, so
                # rejections cannot be used to map internal DNS names.
                where = "a redirect leads to" if redirected else "its host is"
                raise _Rejected(
                    f"{where} {blocked.reason}, which the gateway does not fetch from unless "
                    "image_fetch.allow_hosts or image_fetch.allow_cidrs names it",
                    host,
                )
        return addresses

    async def _get(
        self, session: aiohttp.ClientSession, url: URL, *, redirected: bool
    ) -> aiohttp.ClientResponse:
        addresses = await self._checked_addresses(url, redirected=redirected)
        host = url.raw_host or ""
        headers = {"Host": url.host_port_subcomponent or host, "Accept": _ACCEPT}
        failure: Exception | None = None
        for address in addresses:
            # The checked address goes in the URL, so aiohttp does no DNS lookup of its own.
            pinned = url.with_host(str(address))
            try:
                return await session.get(
                    pinned,
                    headers=headers,
                    allow_redirects=False,
                    server_hostname=host if url.scheme == "https" else None,
                    trace_request_ctx=UNTRACED,
                )
            except aiohttp.ClientConnectorError as exc:
                failure = exc  # try the host's next address
            except aiohttp.ClientError as exc:
                raise _Rejected(f"the request failed ({type(exc).__name__})", host) from exc
        # Only the errno text, because asyncio's own message names the address that failed.
        error_number = getattr(getattr(failure, "os_error", None), "errno", None)
        detail = os.strerror(error_number) if error_number else type(failure).__name__
        raise _Rejected(f"the connection to its host failed ({detail})", host)

    async def _read(self, response: aiohttp.ClientResponse, url: URL) -> FetchedImage:
        host = url.raw_host
        limit = self.settings.max_bytes
        try:
            if response.status != 200:
                raise _Rejected(f"the server returned HTTP {response.status}", host)
            declared = _media_type(response)
            if declared not in IMAGE_MEDIA_TYPES:
                raise _Rejected(
                    f"its content type is {declared or 'missing'!r}, not PNG, JPEG, GIF or WebP",
                    host,
                )
            if response.content_length is not None and response.content_length > limit:
                raise _Rejected(f"it is larger than the limit of {limit} bytes", host)
            data = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                data += chunk
                if len(data) > limit:
                    raise _Rejected(f"it is larger than the limit of {limit} bytes", host)
        except aiohttp.ClientError as exc:
            response.close()
            raise _Rejected(f"reading it failed ({type(exc).__name__})", host) from exc
        except BaseException:
            # Closing, not releasing, drops a connection whose body was not read to the end.
            response.close()
            raise
        response.release()
        sniffed = sniff_image_type(bytes(data[:16]))
        if sniffed is None:
            raise _Rejected(
                f"its bytes are not a PNG, JPEG, GIF or WebP image, although the server "
                f"labelled them {declared}",
                host,
            )
        if sniffed != declared:
            logger.debug("image from %s is labelled %s but is %s", host, declared, sniffed)
        return FetchedImage(bytes(data), sniffed)
