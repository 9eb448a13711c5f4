"""Minimal pass-through proxy, the floor the gateway benchmark compares against.

It is an aiohttp server with one pooled ClientSession. It forwards each request body to the
upstream and streams the response back chunk by chunk as it arrives, and does nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

try:
    import uvloop
except ImportError:  # uvloop is optional: the floor still runs on the default loop.
    uvloop = None  # type: ignore[assignment]

__all__ = ["build_app", "require_loopback_url"]

logger = logging.getLogger(__name__)

_SESSION = web.AppKey("session", aiohttp.ClientSession)
_UPSTREAM = web.AppKey("upstream", str)
_FORWARDED_REQUEST_HEADERS = ("Content-Type", "Authorization", "Accept")


def require_loopback_url(url: str) -> str:
    """Return ``url`` without a trailing slash; raise ValueError unless its host is loopback."""
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"upstream URL {url!r} is not on loopback: the benchmark stays local")
    return url.rstrip("/")


async def _forward(request: web.Request) -> web.StreamResponse:
    session = request.app[_SESSION]
    body = await request.read()
    headers = {
        name: request.headers[name]
        for name in _FORWARDED_REQUEST_HEADERS
        if name in request.headers
    }
    url = request.app[_UPSTREAM] + request.path_qs
    response: web.StreamResponse | None = None
    try:
        async with session.request(request.method, url, data=body, headers=headers) as upstream:
            response = web.StreamResponse(status=upstream.status)
            content_type = upstream.headers.get("Content-Type")
            if content_type is not None:
                response.headers["Content-Type"] = content_type
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except aiohttp.ClientError as exc:
        if request.transport is None or request.transport.is_closing():
            # The client went away, as wrk does with requests in flight when it stops.
            logger.debug("client closed the connection during %s: %r", url, exc)
            return response if response is not None else web.Response(status=499)
        logger.error("upstream request to %s failed: %r", url, exc)
        if response is not None and response.prepared:
            raise  # The status line is sent already, so aiohttp can only drop the connection.
        return web.json_response({"error": {"message": f"upstream failed: {exc!r}"}}, status=502)


async def _open_session(app: web.Application) -> None:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    app[_SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False)


async def _close_session(app: web.Application) -> None:
    await app[_SESSION].close()


def build_app(upstream: str) -> web.Application:
    """Build the proxy application that forwards every path to ``upstream``."""
    app = web.Application()
    app[_UPSTREAM] = require_loopback_url(upstream)
    app.on_startup.append(_open_session)
    app.on_cleanup.append(_close_session)
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


async def _serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(build_app(args.upstream), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    logger.info("floor proxy on http://%s:%d forwarding to %s", args.host, args.port, args.upstream)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        logger.info("floor proxy stopped")


def main(argv: list[str] | None = None) -> int:
    """Run the floor proxy until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="listen port")
    parser.add_argument(
        "--upstream",
        required=True,
        help="upstream base URL on loopback, e.g. http://127.0.0.1:9000",
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the default event loop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    loop_factory = None if args.no_uvloop or uvloop is None else uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
