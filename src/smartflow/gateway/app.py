"""Composition root of a gateway instance: configuration in, running server out."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from smartflow.auth.keys import Caller, KeyStore
from smartflow.config.schema import GatewayConfig
from smartflow.gateway.admin import add_admin_routes
from smartflow.gateway.embeddings import add_embedding_routes
from smartflow.gateway.feedback import add_feedback_route
from smartflow.gateway.handlers import Gateway
from smartflow.gateway.peering import Peering, attach_usage
from smartflow.gateway.upstream import Dispatcher
from smartflow.intercept.listener import attach_interception
from smartflow.normalize import load_profiles
from smartflow.policy.engine import Evaluator, compile_policies
from smartflow.policy.loading import load_policy_files
from smartflow.policy.store import ActivePolicy, PolicyStore
from smartflow.providers.base import Deployment, Provider
from smartflow.providers.registry import build_provider
from smartflow.routing.router import Router
from smartflow.telemetry.metrics import GatewayMetrics
from smartflow.telemetry.tracing import GatewayTracer
from smartflow.transport.http import HTTPSettings, create_session
from smartflow.usage.prices import PriceCatalog
from smartflow.usage.queue import QueueSettings, UsageQueue, open_state_queue
from smartflow.usage.recorder import UsageRecorder
from smartflow.usage.shipper import shipper_from_config

__all__ = [
    "GATEWAY_KEY",
    "POLICY_STORE_KEY",
    "RunningGateway",
    "build_app",
    "settle_heap",
    "start_gateway",
]

logger = logging.getLogger(__name__)

GATEWAY_KEY = web.AppKey("gateway", Gateway)
"""The app's ``Gateway``, for callers that swap its policy with ``set_policy``."""
POLICY_STORE_KEY: web.AppKey[PolicyStore[Evaluator]] = web.AppKey("policy_store", PolicyStore)
USAGE_QUEUE_KEY = web.AppKey("usage_queue", UsageQueue)

# Allocations between collections of the youngest generation (Python's default is 700).
# A request allocates a few thousand objects, nearly all freed by reference counting.
_FIRST_GENERATION_THRESHOLD = 20_000


def build_app(
    config: GatewayConfig,
    environ: Mapping[str, str] | None = None,
    providers: Mapping[str, Provider] | None = None,
) -> web.Application:
    """Build the aiohttp application for one instance.

    ``providers`` replaces the adapters built from ``config.providers`` by name, which
    is how ``smartflow up`` points providers without credentials at simulators.
    """
    peering = Peering.from_config(
        config.peering,
        instance=config.server.instance,
        site=config.server.site,
        environ=os.environ if environ is None else environ,
    )
    # Providers that only a peer serves need no adapter, nor credentials, here.
    remote_only = peering.remote_only_providers(config.models) if peering else set()
    adapters: dict[str, Provider] = dict(providers or {})
    for name, settings in config.providers.items():
        if name not in adapters and name not in remote_only:
            adapters[name] = build_provider(name, settings, environ)
    routes = {
        model: [
            peering.deployment(model, d, provider_kind=config.providers[d.provider].type)
            if peering is not None and peering.is_remote(d.site)
            else Deployment(
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
    owners = {model: route[0].provider.kind for model, route in routes.items()}
    keys = KeyStore(
        (k.sha256, Caller(k.name, k.team, k.user, tuple(k.labels), k.strict_params))
        for k in config.keys
    )
    if not len(keys):
        logger.warning("no virtual keys are configured: every request will get 401")
    if peering is not None:
        keys = peering.key_store(keys)

    app = web.Application(client_max_size=config.server.max_body_bytes)
    http = HTTPSettings(
        connect_timeout=config.timeouts.connect_s, read_timeout=config.timeouts.read_s
    )

    tracer = _tracer(config, os.environ if environ is None else environ)

    async def session_context(app: web.Application):  # type: ignore[no-untyped-def]
        session = create_session(http, [tracer.trace_config()] if tracer is not None else None)
        gateway.dispatcher.session = session
        yield
        await session.close()
        if tracer is not None:
            await tracer.shutdown()

    dispatcher_options: dict[str, Any] = {
        "read_timeout": config.timeouts.read_s,
        "profiles": profiles,
        "image_fetch": config.image_fetch,
    }
    dispatcher = (
        Dispatcher(None, config.retry, **dispatcher_options)  # type: ignore[arg-type]
        if peering is None
        else peering.dispatcher(None, config.retry, keys=keys, **dispatcher_options)
    )
    metrics = GatewayMetrics(requests=config.telemetry.metrics)
    recorder = (UsageRecorder if peering is None else peering.usage_recorder)(
        instance=config.server.instance,
        site=config.server.site,
        prices=PriceCatalog.default(),
        metrics=metrics if config.telemetry.metrics else None,
        tracer=tracer,
    )
    gateway = (Gateway if peering is None else peering.gateway)(
        # Metrics and spans take their values from the usage event, so they need the builder.
        usage=recorder
        if config.usage.enabled or config.telemetry.metrics or tracer is not None
        else None,
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
    if tracer is not None:
        app.middlewares.insert(0, tracer.middleware)
    app.cleanup_ctx.append(session_context)
    app.router.add_get("/metrics", metrics.handle)
    if config.intercept.enabled:
        attach_interception(app, config, gateway, environ)
    if not config.usage.enabled:
        return app

    add_feedback_route(app, gateway.keys.authenticate, recorder)
    attach_usage(app, recorder)
    shipping = config.usage.shipping

    async def usage_context(app: web.Application):  # type: ignore[no-untyped-def]
        queue = await open_state_queue(
            config.state_dir, QueueSettings(**config.usage.queue.model_dump())
        )
        shipper = None
        if shipping is not None:
            shipper = shipper_from_config(
                queue,
                shipping,
                instance=config.server.instance,
                site=config.server.site,
                environ=os.environ if environ is None else environ,
            )
            _ = shipper.start()
        recorder.queue = queue
        metrics.watch_pipeline(queue, shipper)
        app[USAGE_QUEUE_KEY] = queue
        yield
        recorder.queue = None
        if shipper is not None:
            await shipper.stop()
        await queue.close()

    app.cleanup_ctx.append(usage_context)
    return app


def _tracer(config: GatewayConfig, environ: Mapping[str, str]) -> GatewayTracer | None:
    otlp = config.telemetry.otlp
    if otlp is None:
        return None
    return GatewayTracer.from_settings(
        otlp, instance=config.server.instance, site=config.server.site, environ=environ
    )


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


async def start_gateway(
    app: web.Application, host: str, port: int, *, idle_timeout_s: float = 15.0
) -> RunningGateway:
    """Serve ``app`` and return once it accepts connections.

    ``idle_timeout_s`` closes a connection that has no complete request within that time,
    whether it is idle between requests or sending its headers slowly.
    """
    # Cancelling the handler when its client disconnects is what stops an abandoned
    # upstream stream at once. aiohttp arms the keep-alive timer when a connection opens,
    # and only a complete request head stops it, so it also bounds slow headers.
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, keepalive_timeout=idle_timeout_s
    )
    try:
        await runner.setup()
    except BaseException:
        # Close what the contexts that did start opened, such as the provider session.
        await runner.cleanup()
        raise
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


def settle_heap() -> None:
    """Move what startup allocated out of the garbage collector's sight.

    Config, profiles, policy detectors and imported modules live as long as the process,
    yet each full collection would walk them all. Frozen, they are never scanned again,
    and a larger first generation makes the collector run less often per request.
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(_FIRST_GENERATION_THRESHOLD, second, third)


async def serve_forever() -> None:
    await asyncio.Event().wait()
