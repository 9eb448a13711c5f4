"""The control-plane aiohttp application and a helper that serves it."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from smartflow.control.api.errors import error_middleware
from smartflow.control.api.metrics import METRICS_KEY, METRICS_OPERATION, ControlMetrics
from smartflow.control.api.openapi import build_openapi
from smartflow.control.api.routes import OPERATIONS
from smartflow.control.api.routing import PLANE_KEY, add_operations, json_response
from smartflow.control.api.sync import STREAMS_KEY, StreamRegistry
from smartflow.control.dashboard import add_dashboard
from smartflow.control.services.plane import ControlPlane
from smartflow.control.settings import ControlPlaneSettings
from smartflow.core.errors import ConfigError

__all__ = [
    "RunningControlPlane",
    "create_control_plane_app",
    "start_control_plane",
    "tls_context",
]

logger = logging.getLogger(__name__)


def create_control_plane_app(settings: ControlPlaneSettings) -> web.Application:
    """Build the application; the store, keys and migrations are opened when it starts.

    Startup raises ConfigError when the state directory, a key or the database is unusable.
    """
    metrics = ControlMetrics()
    # The metrics middleware is outermost, so it counts the status of rendered errors.
    app = web.Application(
        middlewares=[metrics.middleware, error_middleware],
        client_max_size=settings.max_message_bytes,
    )
    app[METRICS_KEY] = metrics
    metrics.watch(app)
    streams = StreamRegistry()
    app[STREAMS_KEY] = streams
    operations = [*OPERATIONS, METRICS_OPERATION]
    spec = build_openapi(operations)

    async def openapi(_request: web.Request) -> web.Response:
        return json_response(spec)

    app.router.add_get("/openapi.json", openapi, allow_head=False)
    add_operations(app, operations)
    add_dashboard(app, settings.dashboard_session_ttl_s)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        plane = await ControlPlane.open(settings, streams.is_connected)
        app[PLANE_KEY] = plane
        logger.info(
            "control plane ready: state in %s, snapshot signing key %s",
            settings.state_dir,
            plane.signing_key.key_id,
        )
        yield
        await plane.close()

    async def close_streams(_app: web.Application) -> None:
        await streams.close_all()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_streams)
    return app


def tls_context(settings: ControlPlaneSettings) -> ssl.SSLContext | None:
    """Return a server TLS context from the settings' certificate and key, or None.

    Raises:
        ConfigError: the files cannot be read or do not match.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate {settings.tls_cert_file} and key "
            f"{settings.tls_key_file}: {exc}"
        ) from exc
    return context


@dataclass
class RunningControlPlane:
    runner: web.AppRunner
    url: str

    @property
    def plane(self) -> ControlPlane:
        return self.runner.app[PLANE_KEY]

    async def stop(self) -> None:
        await self.runner.cleanup()
        logger.info("control plane at %s stopped", self.url)


async def start_control_plane(settings: ControlPlaneSettings) -> RunningControlPlane:
    """Serve the control plane and return once it accepts connections."""
    context = tls_context(settings)
    app = create_control_plane_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=context)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    sockets = getattr(site._server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else settings.port
    scheme = "https" if context is not None else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"{scheme}://{host}:{port}"
    logger.info("control plane listening on %s", url)
    return RunningControlPlane(runner, url)
