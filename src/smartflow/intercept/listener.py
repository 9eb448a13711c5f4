"""The interception listener: a TLS site in the gateway process, started with it.

HTTP/1.1 connections are served by aiohttp directly. When the client picks ``h2`` in
ALPN, the connection goes to the HTTP/2 front in ``h2front`` instead, which hands each
stream to the same application.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from aiohttp import web

from smartflow.config.schema import GatewayConfig
from smartflow.gateway.handlers import Gateway
from smartflow.intercept.h2front import H2Bridge
from smartflow.intercept.service import InterceptService

__all__ = ["INTERCEPT_KEY", "InterceptListener", "attach_interception"]

logger = logging.getLogger(__name__)


class _ALPNSwitch(asyncio.Protocol):
    """Hand a connection, once its TLS handshake is done, to the protocol ALPN chose."""

    def __init__(
        self,
        http1: Callable[[], asyncio.BaseProtocol],
        h2: Callable[[], asyncio.BaseProtocol] | None,
    ) -> None:
        self._http1 = http1
        self._h2 = h2

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol = self._h2() if chosen == "h2" and self._h2 is not None else self._http1()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class _InterceptSite(web.BaseSite):
    __slots__ = ("_bound", "_h2", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: object,
        h2: Callable[[], asyncio.BaseProtocol] | None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)  # type: ignore[arg-type]
        self._host = host
        self._port = port
        self._h2 = h2
        self._bound: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._bound.sockets) if self._bound is not None else ()

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        h2 = self._h2

        def factory() -> asyncio.BaseProtocol:
            return _ALPNSwitch(server, h2)

        self._bound = await loop.create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
        )
        self._server = self._bound


class InterceptListener:
    """The running listener: its runner, its TLS site and, for HTTP/2, its bridge."""

    def __init__(self, service: InterceptService, max_body_bytes: int) -> None:
        self.service = service
        self._app = service.make_app(max_body_bytes)
        self._runner = web.AppRunner(self._app, handler_cancellation=True, access_log=None)
        self._bridge: H2Bridge | None = None
        self._temp: tempfile.TemporaryDirectory[str] | None = None
        self.port: int | None = None

    async def start(self) -> None:
        settings = self.service.settings
        await self.service.open_sessions()
        await self._runner.setup()
        h2 = None
        if settings.http2:
            self._temp = tempfile.TemporaryDirectory(prefix="smartflow-h2-")
            socket_path = Path(self._temp.name) / "h2.sock"
            bridge_site = web.UnixSite(self._runner, str(socket_path))
            await bridge_site.start()
            socket_path.chmod(0o600)
            self._bridge = H2Bridge(socket_path, self.service.tls)
            h2 = self._bridge.protocol
        site = _InterceptSite(
            self._runner,
            settings.host,
            settings.port,
            ssl_context=self.service.tls.context,
            h2=h2,
        )
        try:
            await site.start()
        except OSError:
            await self.stop()
            raise
        sockets = site.sockets
        self.service.own.add(sockets)
        self.port = sockets[0].getsockname()[1] if sockets else settings.port
        logger.info(
            "interception listener on https://%s:%s for %s (HTTP/2 %s)",
            settings.host,
            self.port,
            ", ".join(self.service.hosts),
            "on" if settings.http2 else "off",
        )

    async def stop(self) -> None:
        if self._bridge is not None:
            await self._bridge.close()
        await self._runner.cleanup()
        await self.service.close_sessions()
        if self._temp is not None:
            self._temp.cleanup()
        logger.info("interception listener stopped")


INTERCEPT_KEY = web.AppKey("intercept", InterceptService)


def attach_interception(
    app: web.Application,
    config: GatewayConfig,
    gateway: Gateway,
    environ: Mapping[str, str] | None = None,
) -> InterceptService:
    """Start and stop the interception listener with ``app``.

    Raises:
        ConfigError: a certificate, key, salt or organisation key cannot be loaded.
    """
    service = InterceptService(config, gateway, environ=environ)
    app[INTERCEPT_KEY] = service

    async def listener_context(app: web.Application) -> AsyncIterator[None]:
        listener = InterceptListener(service, config.server.max_body_bytes)
        await listener.start()
        service.port = listener.port
        yield
        await listener.stop()

    app.cleanup_ctx.append(listener_context)
    return service
