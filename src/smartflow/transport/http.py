"""The shared upstream HTTP client: one pooled session per gateway process."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp

__all__ = ["HTTPSettings", "create_session"]

logger = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class HTTPSettings:
    """Timeouts in seconds and pool limits for upstream connections.

    ``read_timeout`` bounds the wait for each read, so a stream may run longer than it
    as long as bytes keep arriving.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    total_timeout: float | None = None
    max_connections: int = 1000
    max_connections_per_host: int = 0
    keepalive_timeout: float = 30.0


def create_session(
    settings: HTTPSettings, trace_configs: list[aiohttp.TraceConfig] | None = None
) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=settings.max_connections,
        limit_per_host=settings.max_connections_per_host,
        keepalive_timeout=settings.keepalive_timeout,
        ttl_dns_cache=300,
    )
    timeout = aiohttp.ClientTimeout(
        total=settings.total_timeout,
        sock_connect=settings.connect_timeout,
        sock_read=settings.read_timeout,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=True,
        # One session serves every caller, so a cookie set by an upstream for one caller
        # must never ride along on another caller's request.
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
        headers={"User-Agent": "smartflow-gateway"},
        trace_configs=trace_configs,
    )
