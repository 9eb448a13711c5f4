"""Composition root of a gateway instance: configuration in, running server out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from smartflow.auth.keys import Caller, KeyStore
from smartflow.config.schema import GatewayConfig
from smartflow.gateway.handlers import Gateway
from smartflow.gateway.upstream import Dispatcher
from smartflow.normalize import load_profiles
from smartflow.providers.base import Deployment, Provider
from smartflow.providers.registry import build_provider
from smartflow.routing.router import Router
from smartflow.transport.http import HTTPSettings, create_session

__all__ = ["RunningGateway", "build_app", "start_gateway"]

logger = logging.getLogger(__name__)


def build_app(
    config: GatewayConfig,
    environ: Mapping[str, str] | None = None,
    providers: Mapping[str, Provider] | None = None,
) -> web.Application:
    """Build the aiohttp application for one instance.

    ``providers`` replaces the adapters built from ``config.providers`` by name, which
    is how ``smartflow up`` points providers without credentials at simulators.
    """
    adapters: dict[str, Provider] = dict(providers or {})
    for name, settings in config.providers.items():
        if name not in adapters:
            adapters[name] = build_provider(name, settings, environ)
    routes = {
        model: [
            Deployment(
                model,
                adapters[d.provider],
                d.model,
                site=d.site or config.server.site,
                base_model=d.base_model,
                pinned=d.pinned,
            )
            for d in deployments
        ]
        for model, deployments in config.models.items()
    }
    profiles = load_profiles(config.normalization.profiles_dir)
    owners = {
        model: adapters[deployments[0].provider].kind
        for model, deployments in config.models.items()
    }
    keys = KeyStore(
        (k.sha256, Caller(k.name, k.team, k.user, tuple(k.labels), k.strict_params))
        for k in config.keys
    )
    if not len(keys):
        logger.warning("no virtual keys are configured: every request will get 401")

    app = web.Application(client_max_size=config.server.max_body_bytes)
    http = HTTPSettings(
        connect_timeout=config.timeouts.connect_s, read_timeout=config.timeouts.read_s
    )

    async def session_context(app: web.Application):  # type: ignore[no-untyped-def]
        session = create_session(http)
        gateway.dispatcher.session = session
        yield
        await session.close()

    dispatcher = Dispatcher(
        None,  # type: ignore[arg-type]
        config.retry,
        read_timeout=config.timeouts.read_s,
        profiles=profiles,
    )
    gateway = Gateway(
        router=Router(routes),
        keys=keys,
        dispatcher=dispatcher,
        max_body_bytes=config.server.max_body_bytes,
        access_log=config.server.access_log,
        owners=owners,
        strict_params=config.normalization.strict,
    )
    gateway.add_routes(app)
    app.middlewares.append(gateway.dialect_errors)
    app.cleanup_ctx.append(session_context)
    return app


@dataclass(slots=True)
class RunningGateway:
    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()
        logger.info("gateway at %s stopped", self.url)


async def start_gateway(app: web.Application, host: str, port: int) -> RunningGateway:
    """Serve ``app`` and return once it accepts connections."""
    # Cancelling the handler when its client disconnects is what stops an abandoned
    # upstream stream at once.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    sockets = site._server.sockets if site._server is not None else []  # type: ignore[attr-defined]
    bound = sockets[0].getsockname()[1] if sockets else port
    url = f"http://{host}:{bound}"
    logger.info("gateway listening on %s", url)
    return RunningGateway(runner, url)


async def serve_forever() -> None:
    await asyncio.Event().wait()
