"""Composition root of a gateway instance: configuration in, running server out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from smartflow.auth.keys import Caller, KeyStore
from smartflow.config.schema import GatewayConfig
from smartflow.gateway.admin import add_admin_routes
from smartflow.gateway.embeddings import add_embedding_routes
from smartflow.gateway.handlers import Gateway
from smartflow.gateway.upstream import Dispatcher
from smartflow.normalize import load_profiles
from smartflow.policy.engine import Evaluator, compile_policies
from smartflow.policy.loading import load_policy_files
from smartflow.policy.store import ActivePolicy, PolicyStore
from smartflow.providers.base import Deployment, Provider
from smartflow.providers.registry import build_provider
from smartflow.routing.router import Router
from smartflow.telemetry.metrics import GatewayMetrics
from smartflow.transport.http import HTTPSettings, create_session
from smartflow.usage.prices import PriceCatalog
from smartflow.usage.queue import UsageQueue
from smartflow.usage.recorder import UsageRecorder

__all__ = ["GATEWAY_KEY", "POLICY_STORE_KEY", "RunningGateway", "build_app", "start_gateway"]

logger = logging.getLogger(__name__)

GATEWAY_KEY = web.AppKey("gateway", Gateway)
"""The app's ``Gateway``, for callers that swap its policy with ``set_policy``."""
POLICY_STORE_KEY: web.AppKey[PolicyStore[Evaluator]] = web.AppKey("policy_store", PolicyStore)
USAGE_QUEUE_KEY = web.AppKey("usage_queue", UsageQueue)


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
        image_fetch=config.image_fetch,
    )
    metrics = GatewayMetrics()
    recorder = UsageRecorder(
        instance=config.server.instance,
        site=config.server.site,
        prices=PriceCatalog.default(),
        metrics=metrics,
    )
    gateway = Gateway(
        usage=recorder if config.usage.enabled else None,
        router=Router(routes),
        keys=keys,
        dispatcher=dispatcher,
        max_body_bytes=config.server.max_body_bytes,
        access_log=config.server.access_log,
        owners=owners,
        strict_params=config.normalization.strict,
        site=config.server.site,
    )
    store = _attach_policy(gateway, config)
    gateway.add_routes(app)
    add_embedding_routes(app, gateway)
    add_admin_routes(app, store, config.admin_tokens)
    app[GATEWAY_KEY] = gateway
    app[POLICY_STORE_KEY] = store
    app.middlewares.append(gateway.dialect_errors)
    app.cleanup_ctx.append(session_context)
    app.router.add_get("/metrics", metrics.handle)
    if not config.usage.enabled:
        return app

    async def usage_context(app: web.Application):  # type: ignore[no-untyped-def]
        queue = await UsageQueue.open(Path(config.state_dir) / "usage" / "events.db")
        recorder.queue = queue
        metrics.watch_pipeline(queue)
        app[USAGE_QUEUE_KEY] = queue
        yield
        recorder.queue = None
        await queue.close()

    app.cleanup_ctx.append(usage_context)
    return app


def _attach_policy(gateway: Gateway, config: GatewayConfig) -> PolicyStore[Evaluator]:
    """Open the policy store under ``state_dir`` and give the gateway its policy.

    The store's active version wins. Without one, the documents of ``policy_files`` apply
    until the first version is applied. Every later version replaces the policy at once.

    Raises:
        ConfigError: a stored version or a policy file is unreadable or invalid.
    """
    store: PolicyStore[Evaluator] = PolicyStore.open(
        Path(config.state_dir) / "policies", compile_policies
    )
    active = store.active
    if active is not None:
        logger.info("policy: version %d from the policy store", active.version.version)
        gateway.set_policy(active.evaluator)
    elif config.policy_files:
        gateway.set_policy(compile_policies(load_policy_files(config.policy_files)))
    else:
        logger.info("policy: none (no stored version and no policy_files)")

    def on_new_version(new: ActivePolicy[Evaluator]) -> None:
        logger.info("policy: version %d is now active", new.version.version)
        gateway.set_policy(new.evaluator)

    store.subscribe(on_new_version, replay=False)
    return store


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
