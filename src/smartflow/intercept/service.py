"""Host dispatch: which API an intercepted request is for, and who serves it.

The ``Host`` header (checked against the TLS server name) selects the host's dialect.
The chat routes the gateway serves go through its own handlers, so policy, usage and
errors behave as on the plain listener. Every other path is passed through to the real
host by ``Forwarder``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from smartflow.config.intercept import parse_address
from smartflow.config.schema import GatewayConfig
from smartflow.core.errors import InternalError, InvalidRequest, SmartflowError, UpstreamUnavailable
from smartflow.gateway.handlers import Gateway
from smartflow.gateway.ids import new_request_id
from smartflow.gateway.ingress import ANTHROPIC, OPENAI, Ingress
from smartflow.gateway.upstream import Dispatcher
from smartflow.intercept.adapters import HostRouter, build_host_provider
from smartflow.intercept.forward import Forwarder
from smartflow.intercept.identity import InterceptIdentity, load_salt
from smartflow.intercept.loop import HOP_HEADER, LoopDetected, OwnAddresses
from smartflow.intercept.resolver import UpstreamResolver
from smartflow.intercept.tls import ServerTLS
from smartflow.policy.engine import Evaluator

__all__ = ["InterceptService"]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _HostGateway(Gateway):
    """The gateway's request path for one host, always under the main gateway's policy."""

    def __init__(self, main: Gateway, **kwargs: Any) -> None:
        self._main = main
        super().__init__(**kwargs)

    @property
    def policy(self) -> Evaluator | None:
        return self._main.policy

    @policy.setter
    def policy(self, value: Evaluator | None) -> None:
        # The main gateway's policy store decides; set_policy on it reaches every host.
        del value


@dataclass(slots=True)
class _Host:
    name: str
    ingress: Ingress
    identity: InterceptIdentity
    routes: dict[tuple[str, str], Handler]
    forwarder: Forwarder


def _host_of(request: web.Request) -> str:
    host = request.host or ""
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    else:
        host = host.partition(":")[0]
    return host.lower().rstrip(".")


class InterceptService:
    """The application behind the interception listener, and its upstream sessions."""

    def __init__(
        self,
        config: GatewayConfig,
        main: Gateway,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        settings = config.intercept
        self.settings = settings
        self.own = OwnAddresses()
        self.tls = ServerTLS(
            settings.certificates, settings.hosts, http2=settings.http2, environ=environ
        )
        self.hop_id = settings.hop_id or config.server.instance
        fixed = {
            name: [parse_address(a, 443) for a in host.addresses]
            for name, host in settings.hosts.items()
            if host.addresses
        }
        nameservers = [parse_address(a, 53) for a in settings.nameservers]
        self.resolver = UpstreamResolver(fixed, nameservers, self.own)
        self._upstream_ssl: ssl.SSLContext = ssl.create_default_context(
            cafile=settings.upstream_ca_file
        )
        self._config = config
        self._chat_session: aiohttp.ClientSession | None = None
        self._raw_session: aiohttp.ClientSession | None = None
        self._dispatchers: list[Dispatcher] = []
        self.port: int | None = None
        """The listener's bound port, once it is started."""
        salt = load_salt(settings.identity, environ)
        self.hosts = {
            name: self._build_host(name, host.dialect, main, salt, environ)
            for name, host in settings.hosts.items()
        }

    def _build_host(
        self,
        name: str,
        dialect: str,
        main: Gateway,
        salt: bytes | None,
        environ: Mapping[str, str] | None,
    ) -> _Host:
        settings = self.settings.hosts[name]
        identity = InterceptIdentity(
            host=name,
            mode=settings.identity,
            settings=self.settings.identity,
            salt=salt,
            virtual_keys=main.keys,
            organisation_key_env=settings.organisation_key_env,
            environ=environ,
        )
        provider = build_host_provider(name, dialect, identity, self.hop_id)
        config = self._config
        dispatcher = Dispatcher(
            None,  # type: ignore[arg-type]
            config.retry,
            read_timeout=config.timeouts.read_s,
            profiles=main.dispatcher.profiles,
            image_fetch=config.image_fetch,
        )
        gateway = _HostGateway(
            main,
            router=HostRouter(provider, config.server.site),
            keys=identity,
            dispatcher=dispatcher,
            max_body_bytes=config.server.max_body_bytes,
            access_log=config.server.access_log,
            strict_params=config.normalization.strict,
            site=config.server.site,
            usage=main.usage,
        )
        ingress = ANTHROPIC if dialect == "anthropic" else OPENAI
        if dialect == "anthropic":
            routes: dict[tuple[str, str], Handler] = {
                ("POST", "/v1/messages"): gateway.messages,
                ("POST", "/v1/messages/count_tokens"): gateway.count_tokens,
            }
        else:
            routes = {("POST", "/v1/chat/completions"): gateway.chat_completions}
        forwarder = Forwarder(
            host=name,
            ingress=ingress,
            identity=identity,
            session=self._raw,
            policy=lambda: main.policy,
            hop_id=self.hop_id,
            site=config.server.site,
            max_body_bytes=config.server.max_body_bytes,
        )
        self._dispatchers.append(dispatcher)
        return _Host(name, ingress, identity, routes, forwarder)

    def _raw(self) -> aiohttp.ClientSession:
        assert self._raw_session is not None, "the interception service is not started"
        return self._raw_session

    async def open_sessions(self) -> None:
        """Open the upstream connection pool, shared by chat routes and pass-through."""
        config = self._config
        connector = aiohttp.TCPConnector(
            resolver=self.resolver,
            ssl=self._upstream_ssl,
            limit=1000,
            keepalive_timeout=30.0,
            ttl_dns_cache=60,
        )
        timeout = aiohttp.ClientTimeout(
            sock_connect=config.timeouts.connect_s, sock_read=config.timeouts.read_s
        )
        self._chat_session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        # Pass-through relays bodies as the host sent them, compressed or not.
        self._raw_session = aiohttp.ClientSession(
            connector=connector,
            connector_owner=False,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        for dispatcher in self._dispatchers:
            dispatcher.session = self._chat_session

    async def close_sessions(self) -> None:
        if self._raw_session is not None:
            await self._raw_session.close()
        if self._chat_session is not None:
            await self._chat_session.close()

    def make_app(self, max_body_bytes: int) -> web.Application:
        app = web.Application(client_max_size=max_body_bytes)
        app.router.add_route("*", "/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one request of an intercepted host; see the module docstring."""
        name = _host_of(request)
        host = self.hosts.get(name)
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        if host is None or not self.tls.serves(ssl_object, name):
            return _misdirected(name, sorted(self.hosts))
        request_id = new_request_id()
        try:
            hop = request.headers.get(HOP_HEADER)
            if hop is not None:
                raise LoopDetected(
                    f"This request for {name} already passed through Smartflow instance "
                    f"{hop[:100]!r}, so forwarding it again would loop. Point that "
                    "instance's upstream for the host at the real provider address."
                )
            try:
                await self.resolver.lookup(name, 443)
            except OSError as exc:
                raise UpstreamUnavailable(f"Cannot resolve {name}: {exc}.") from exc
            handler = host.routes.get((request.method, request.path))
            if handler is not None:
                return await handler(request)
            caller = host.identity.authenticate(request.headers)
            return await host.forwarder.forward(request, caller, request_id)
        except SmartflowError as exc:
            return _error(host.ingress, exc, request_id)
        except Exception:
            logger.exception("request %s: unexpected error on %s%s", request_id, name, request.path)
            failure = InternalError("The gateway failed to process the request.")
            return _error(host.ingress, failure, request_id)


def _error(ingress: Ingress, error: SmartflowError, request_id: str) -> web.Response:
    logger.log(error.log_level, "request %s: %s (%s)", request_id, error.message, error.code)
    status, body, headers = ingress.render_error(error)
    headers[ingress.request_id_header] = request_id
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _misdirected(name: str, served: list[str]) -> web.Response:
    error = InvalidRequest(
        f"This listener does not serve the host {name[:200]!r} on this connection. It serves "
        f"{', '.join(served)}; send the request to one of them, with a TLS server name "
        "that matches the Host header."
    )
    error.status = 421
    return _error(OPENAI, error, new_request_id())
