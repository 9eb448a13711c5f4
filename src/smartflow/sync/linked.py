"""A gateway instance linked to a control plane: its HTTP app, state swap and start-up.

Requests go through :class:`LiveGateway`, which contains one :class:`RuntimeState` at a
time. A new snapshot version replaces that state with one assignment. A request reads
it once when it starts, so requests in flight finish on the version they started with.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from smartflow.auth.keys import Caller, KeyStore
from smartflow.config.schema import (
    ControlPlaneLinkSettings,
    GatewayConfig,
    UsageShippingSettings,
)
from smartflow.core.errors import ConfigError, SmartflowError
from smartflow.gateway.app import RunningGateway, start_gateway
from smartflow.gateway.feedback import add_feedback_route
from smartflow.gateway.handlers import Gateway
from smartflow.gateway.ids import new_request_id
from smartflow.gateway.ingress import ANTHROPIC, OPENAI, Ingress
from smartflow.gateway.peering import attach_usage, usage_recorder_class
from smartflow.gateway.upstream import Dispatcher
from smartflow.providers.base import Provider, Secret
from smartflow.routing.router import Router
from smartflow.sync.agent import SSLOption, SyncAgent, enroll, link_ssl
from smartflow.sync.protocol import SnapshotProvider
from smartflow.sync.runtime import RuntimeBuilder, RuntimeState, SnapshotInvalid
from smartflow.sync.state import LinkFiles
from smartflow.telemetry.metrics import GatewayMetrics
from smartflow.transport.http import HTTPSettings, create_session
from smartflow.usage.prices import PriceCatalog
from smartflow.usage.queue import QueueSettings, open_state_queue
from smartflow.usage.recorder import UsageRecorder
from smartflow.usage.shipper import ShipperSettings, UsageShipper

__all__ = ["ConfigurationUnavailable", "LinkedGateway", "LiveGateway", "start_linked_gateway"]

logger = logging.getLogger(__name__)


class ConfigurationUnavailable(SmartflowError):
    """No configuration yet, or one older than the configured maximum staleness."""

    status = 503
    code = "configuration_unavailable"


class LiveGateway:
    """The request handlers of a linked instance, served from the current runtime state."""

    def __init__(self, config: GatewayConfig, link: ControlPlaneLinkSettings) -> None:
        self._link = link
        self._state: RuntimeState | None = None
        self._reject_after: float | None = None
        """Monotonic time from which requests are rejected as stale; None never."""
        self._stale_timer: asyncio.TimerHandle | None = None
        self.link_up = False
        self.last_contact: float | None = None
        """Unix time the link was last open."""
        # Renders aiohttp's 404 and 405 in the caller's dialect before any state exists.
        self._fallback = Gateway(
            router=Router({}),
            keys=KeyStore(),
            dispatcher=Dispatcher(
                None,  # type: ignore[arg-type]
                config.retry,
                read_timeout=config.timeouts.read_s,
            ),
            max_body_bytes=config.server.max_body_bytes,
        )

    @property
    def state(self) -> RuntimeState | None:
        return self._state

    def swap(self, state: RuntimeState) -> None:
        """Make ``state`` serve new requests; requests under way keep the previous one."""
        self._state = state

    # --- link and staleness ------------------------------------------------------------

    def set_link(self, up: bool) -> None:
        """Record the link opening or closing, and schedule the staleness deadline."""
        self.link_up = up
        self.last_contact = time.time()
        self._cancel_timer()
        if up:
            if self._reject_after is not None:
                logger.info("link restored; requests are served again")
            self._reject_after = None
            return
        self.start_staleness_clock(self.last_contact)

    def start_staleness_clock(self, last_contact: float) -> None:
        """Count staleness from ``last_contact`` (Unix time) while the link is down."""
        self.last_contact = last_contact
        limit = self._link.max_staleness_s
        if limit is None:
            return
        remaining = max(0.0, last_contact + limit - time.time())
        if self._link.on_stale == "reject":
            self._reject_after = time.monotonic() + remaining
        loop = asyncio.get_running_loop()
        self._stale_timer = loop.call_later(remaining, self._log_stale)

    def _log_stale(self) -> None:
        version = self._state.version if self._state is not None else 0
        action = "rejecting requests" if self._link.on_stale == "reject" else "still serving"
        logger.warning(
            "configuration version %d is stale: no link to the control plane for %.0f s; %s",
            version,
            self._link.max_staleness_s or 0,
            action,
        )

    def _cancel_timer(self) -> None:
        if self._stale_timer is not None:
            self._stale_timer.cancel()
            self._stale_timer = None

    def _unavailable(self, ingress: Ingress) -> web.Response:
        if self._state is None:
            error = ConfigurationUnavailable(
                "This gateway instance has not received its configuration from the control "
                "plane yet. Retry shortly; if it persists, check the instance's link."
            )
        else:
            error = ConfigurationUnavailable(
                f"This gateway instance has had no link to its control plane for more than "
                f"{self._link.max_staleness_s:g} s, so its configuration may be out of date "
                "and requests are rejected. Retry later or use another instance."
            )
        request_id = new_request_id()
        logger.info("request %s rejected: %s", request_id, error.message)
        status, body, headers = ingress.render_error(error)
        headers[ingress.request_id_header] = request_id
        return web.Response(
            status=status, body=body, content_type="application/json", headers=headers
        )

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        """Authenticate a caller with the keys of the current configuration.

        Raises:
            ConfigurationUnavailable: no configuration is being served.
            AuthenticationError: the key is missing or unknown.
        """
        state = self._current()
        if state is None:
            raise ConfigurationUnavailable(
                "This gateway instance has no current configuration from its control plane, "
                "so it cannot check the key. Retry shortly."
            )
        return state.gateway.keys.authenticate(headers)

    def _current(self) -> RuntimeState | None:
        state = self._state
        if state is None:
            return None
        if self._reject_after is not None and time.monotonic() >= self._reject_after:
            return None
        return state

    # --- handlers ----------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/healthz", self.health)
        app.router.add_route("*", "/admin/{tail:.*}", self.admin)
        app.middlewares.append(self.dialect_errors)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        state = self._current()
        if state is None:
            return self._unavailable(OPENAI)
        return await state.gateway.chat_completions(request)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        state = self._current()
        if state is None:
            return self._unavailable(ANTHROPIC)
        return await state.gateway.messages(request)

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        state = self._current()
        if state is None:
            return self._unavailable(ANTHROPIC)
        return await state.gateway.count_tokens(request)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        state = self._current()
        if state is None:
            return self._unavailable(OPENAI)
        return await state.embeddings.handle(request)

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        state = self._current()
        if state is None:
            anthropic = "anthropic-version" in request.headers
            return self._unavailable(
                ANTHROPIC if anthropic and "Authorization" not in request.headers else OPENAI
            )
        return await state.gateway.list_models(request)

    async def health(self, request: web.Request) -> web.Response:
        state = self._state
        body: dict[str, Any] = {
            "status": "ok" if self._current() is not None else "unavailable",
            "version": state.version if state is not None else None,
            "link": "up" if self.link_up else "down",
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def admin(self, request: web.Request) -> web.Response:
        message = (
            "this instance is linked to the control plane at "
            f"{self._link.url}; apply policies there, for example with "
            f"`smartflow policy apply --control-plane {self._link.url} FILE`"
        )
        body = {"error": {"code": "conflict", "message": message}}
        return web.Response(status=409, body=orjson.dumps(body), content_type="application/json")

    @web.middleware
    async def dialect_errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        state = self._state
        gateway = state.gateway if state is not None else self._fallback
        return await gateway.dialect_errors(request, handler)


@dataclass(slots=True)
class LinkedGateway:
    """A running linked instance."""

    running: RunningGateway
    live: LiveGateway
    agent: SyncAgent
    files: LinkFiles
    stopped: bool = False

    @property
    def url(self) -> str:
        return self.running.url

    async def stop(self) -> None:
        """Close the link and the server; calling it again does nothing."""
        if self.stopped:
            return
        self.stopped = True
        await self.agent.stop()
        await self.running.stop()


async def start_linked_gateway(
    config: GatewayConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    enroll_token: str | None = None,
    environ: Mapping[str, str] | None = None,
    providers: Mapping[str, Provider] | None = None,
    remote_provider: Callable[[str, SnapshotProvider], Provider | None] | None = None,
    wait_for_sync_s: float | None = None,
) -> LinkedGateway:
    """Start a gateway instance linked to the control plane in ``config.control_plane``.

    The instance enrolls with the one-time token unless ``state_dir`` already contains
    an enrollment. It serves the last good snapshot saved under ``state_dir``, or
    rejects requests with 503 until the first snapshot arrives. In the background it
    keeps the sync stream open and applies each new version atomically.

    Args:
        config: Local settings. ``server``, ``state_dir``, ``retry``, ``timeouts``,
            ``image_fetch``, ``usage`` and ``normalization`` apply; ``providers``,
            ``models``, ``keys`` and ``policy_files`` are replaced by the snapshots.
        host, port: Listen address; default ``config.server``. Port 0 picks a free one.
        enroll_token: The one-time token; default ``$<control_plane.enroll_token_env>``
            read from ``environ``. Used only while not yet enrolled.
        environ: Variables for the token and for provider credentials that a snapshot
            leaves to the site (``api_key_env``); default ``os.environ``.
        providers: Adapters that replace the snapshot's providers of the same name,
            such as simulators.
        remote_provider: Builds the adapter that reaches a provider of another site
            (see ``RuntimeBuilder``); without it such deployments are left out.
        wait_for_sync_s: Wait up to this long for the first applied version before
            returning; on timeout the instance keeps running and a warning is logged.

    Raises:
        ConfigError: ``config.control_plane`` is missing, enrollment fails, or a local
            file is unusable.
        OSError: the listen address is in use.
    """
    link = config.control_plane
    if link is None:
        raise ConfigError("start_linked_gateway needs a 'control_plane' section in the config")
    env = os.environ if environ is None else environ
    name = link.name or config.server.instance
    site = link.site or config.server.site
    files = LinkFiles(Path(config.state_dir), link.secret_key_env)
    ssl_option = link_ssl(link)
    token = enroll_token or env.get(link.enroll_token_env, "").strip() or None
    enrollment = await enroll(link, files, name=name, site=site, token=token, ssl_option=ssl_option)
    _warn_ignored(config)

    metrics = GatewayMetrics(requests=config.telemetry.metrics)
    recorder = usage_recorder_class(config.peering)(
        instance=name,
        site=site,
        prices=PriceCatalog.default(),
        metrics=metrics if config.telemetry.metrics else None,
    )
    # Metrics take their values from the usage event, so they need the builder too.
    usage = recorder if config.usage.enabled or config.telemetry.metrics else None
    builder = RuntimeBuilder(
        config,
        site=site,
        environ=environ,
        providers=providers,
        usage=usage,
        remote_provider=remote_provider,
    )
    live = LiveGateway(config, link)
    saved = files.load_snapshot({enrollment.verify_key.key_id: enrollment.verify_key})

    def apply(state: RuntimeState) -> None:
        recorder.prices = _central_prices(state, recorder.prices)
        live.swap(state)

    agent = SyncAgent(
        link=link,
        enrollment=enrollment,
        files=files,
        builder=builder,
        apply=apply,
        on_link=live.set_link,
        applied=None,
        ssl_option=ssl_option,
    )
    app = web.Application(client_max_size=config.server.max_body_bytes)
    live.add_routes(app)
    if usage is not None:
        add_feedback_route(app, live.authenticate, recorder)
    if usage is not None:
        attach_usage(app, recorder)
    app.router.add_get("/metrics", metrics.handle)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        http = HTTPSettings(
            connect_timeout=config.timeouts.connect_s, read_timeout=config.timeouts.read_s
        )
        session = create_session(http)
        builder.session = session
        if saved is not None:
            try:
                apply(await asyncio.to_thread(builder.build, saved.snapshot))
                agent.restore(saved.message)
                logger.info(
                    "serving saved snapshot version %d until the link is up", saved.snapshot.version
                )
            except SnapshotInvalid as exc:
                logger.error(
                    "the saved snapshot version %d cannot be built: %s", saved.snapshot.version, exc
                )
            live.start_staleness_clock(saved.last_contact)
        agent.start()
        yield
        await agent.stop()
        await session.close()

    app.cleanup_ctx.append(lifecycle)
    if config.usage.enabled:
        # The link's URL and credential; batch sizes and waits from usage.shipping if set.
        events_url = link.url.rstrip("/") + "/v1/events"
        tuning = config.usage.shipping or UsageShippingSettings(url=events_url)
        shipping = ShipperSettings(
            url=events_url,
            credential=Secret(enrollment.credential),
            instance=name,
            site=site,
            batch_events=tuning.batch_events,
            idle_wait_s=tuning.idle_wait_s,
            fill_wait_s=tuning.fill_wait_s,
            backoff_max_s=tuning.backoff_max_s,
        )
        app.cleanup_ctx.append(_usage_context(config, recorder, metrics, shipping, ssl_option))
    running = await start_gateway(
        app,
        host or config.server.host,
        config.server.port if port is None else port,
        idle_timeout_s=config.server.idle_timeout_s,
    )
    linked = LinkedGateway(running, live, agent, files)
    if wait_for_sync_s is not None:
        try:
            await agent.wait_for_version(None, wait_for_sync_s)
        except TimeoutError:
            logger.warning(
                "instance %s has not synced with the control plane after %.0f s; it serves "
                "its saved version, if any, and keeps retrying the link",
                name,
                wait_for_sync_s,
            )
    logger.info("linked instance %s (site %s) serving on %s", name, site, running.url)
    return linked


def _warn_ignored(config: GatewayConfig) -> None:
    ignored = [
        name for name in ("providers", "models", "keys", "policy_files") if getattr(config, name)
    ]
    if ignored:
        logger.warning(
            "linked to a control plane: the configuration's %s come from the control plane "
            "and the file's values are ignored",
            ", ".join(ignored),
        )
    unsupported = []
    if config.intercept.enabled:
        unsupported.append("intercept")
    if config.telemetry.otlp is not None:
        unsupported.append("telemetry.otlp")
    if unsupported:
        # NOTE: a linked instance does not build the interception listener or the tracer.
        logger.warning(
            "linked instances do not support %s yet; run a standalone gateway for them",
            " and ".join(unsupported),
        )


def _central_prices(state: RuntimeState, current: PriceCatalog) -> PriceCatalog:
    """Return the price catalogue that ``state``'s snapshot sets, or ``current`` unchanged."""
    overlay = state.snapshot.content.prices
    if overlay is None:
        return current if current.version == "builtin" else PriceCatalog.default()
    if current.version == f"central-{overlay.version}":
        return current
    return PriceCatalog.with_overlay(overlay.providers, overlay.version)


def _usage_context(
    config: GatewayConfig,
    recorder: UsageRecorder,
    metrics: GatewayMetrics,
    shipping: ShipperSettings,
    ssl_option: SSLOption,
) -> Any:
    """Open the usage queue, and ship its events to the control plane the link goes to."""

    async def usage_context(_app: web.Application) -> AsyncIterator[None]:
        queue = await open_state_queue(
            config.state_dir, QueueSettings(**config.usage.queue.model_dump())
        )
        recorder.queue = queue
        metrics.watch_pipeline(queue)
        # The shipper verifies the control plane's certificate as the sync link does.
        connector = aiohttp.TCPConnector(ssl=True if ssl_option is None else ssl_option)
        session = aiohttp.ClientSession(connector=connector)
        shipper = UsageShipper(queue, shipping, session=session)
        _ = shipper.start()
        yield
        await shipper.stop()
        await session.close()
        recorder.queue = None
        await queue.close()

    return usage_context
