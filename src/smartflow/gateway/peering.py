"""Linked routing: serving a model of another site through the instance at that site.

The entry instance, where the caller's request arrives, does all of the policy work:
request rules, residency, and response rules with the restoring of tokenized values. It
then forwards the request, already rewritten, in the caller's dialect to the peer that
serves the deployment's site. The peer authenticates the peer credential, takes the
caller's identity from the headers, and skips its own policy evaluation, so no text is
redacted twice and every entity is counted once, at the entry instance. Because of
this, a policy's ``scope.sites`` matches the site where a request enters. The peer
serves only the deployment the entry instance chose, which residency already allowed,
and never forwards a forwarded request again.

NOTE: parameter normalisation runs at the peer, and the entry instance's
``x-smartflow-params`` header reports ``none`` for a forwarded request. Embeddings are
not forwarded.

Usage: a forwarded request has one usage event, recorded by the peer, because the peer
makes the provider call and so has its provider, tokens, cost and latency. The event
takes the entry instance's request id, site and request-side policy decision from the
peer headers. The peer records no event for a forwarded request it fails with an
error. The entry instance records its own event whenever the peer did not confirm with
the recorded header (peer unreachable, credential rejected, an error answer, or a peer
without a usage queue).

NOTE: the entry instance applies its response rules after the peer has recorded the
event, so the event of a forwarded request has no response-side findings and does not
show a response that those rules blocked.

None of these classes is used unless the ``peering`` section is set, so a gateway
without it runs the plain request path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeGuard

import aiohttp
import orjson
from aiohttp import web

from smartflow.auth.keys import Caller, KeyStore, hash_key
from smartflow.config.schema import DeploymentSettings, PeeringSettings, PeerSettings
from smartflow.core.errors import (
    AuthenticationError,
    ConfigError,
    InvalidRequest,
    NotFound,
    UpstreamError,
)
from smartflow.core.types import ChatRequest
from smartflow.gateway.handlers import Gateway
from smartflow.gateway.upstream import Dispatcher, Encoder, Exchange, OpenStream, transport_error
from smartflow.policy.decision import Decision
from smartflow.policy.hooks import CLASSIFICATION_HEADER
from smartflow.policy.run import PolicyRun
from smartflow.providers.base import Deployment, Secret
from smartflow.providers.peer import (
    PEER_CALLER_HEADER,
    PEER_DEPLOYMENT_HEADER,
    PEER_HOP_HEADER,
    PEER_RECORDED_HEADER,
    PEER_REQUEST_ID_HEADER,
    PEER_TOKEN_HEADER,
    PEER_USAGE_HEADER,
    PeerProvider,
)
from smartflow.usage.builder import UsageBuilder, policy_summary
from smartflow.usage.events import AttemptRecord, PolicySummary, UsageEvent
from smartflow.usage.recorder import UsageRecorder

__all__ = [
    "ForwardedRequest",
    "PeerCaller",
    "Peering",
    "PeeringDispatcher",
    "PeeringGateway",
    "PeeringKeyStore",
    "PeeringUsageRecorder",
    "attach_usage",
    "decode_caller",
    "decode_usage",
    "encode_caller",
    "encode_usage",
    "usage_recorder_class",
]

logger = logging.getLogger(__name__)

_MAX_CALLER_HEADER = 8192
_MAX_USAGE_HEADER = 16384
_MAX_NAME_CHARS = 128
"""Maximum length of a request id or instance name taken from a peer header: the width
of those columns at the control plane."""

# Request-scoped state shared by the dispatcher, the gateway and the usage recorder of
# one request. Each request runs in its own asyncio task, whose context copy isolates
# these values; the dispatcher and the recorder run in that same task.
# NOTE: a dispatcher call moved into another task would not see or set them.
_entry_decision: ContextVar[Decision | None] = ContextVar(
    "smartflow_peering_entry_decision", default=None
)
"""At the entry instance: the policy decision of the request, sent to the peer."""
_recorded_by: ContextVar[str | None] = ContextVar("smartflow_peering_recorded_by", default=None)
"""At the entry instance: the peer that confirmed it records the request's usage event."""
_forwarded: ContextVar[ForwardedRequest | None] = ContextVar(
    "smartflow_peering_forwarded", default=None
)
"""At the receiving instance: the entry instance's details of a forwarded request."""

_FORWARDED_KEY = web.RequestKey("smartflow_peer_forwarded", bool)


@dataclass(slots=True, frozen=True)
class PeerCaller(Caller):
    """A caller whose request another instance forwarded; ``peer`` names that instance."""

    peer: str = ""


def encode_caller(caller: Caller, headers: Mapping[str, str]) -> str:
    """Encode the caller's identity and labels as the value of the caller header.

    The labels are the key's labels plus those of the classification header, which the
    peer would otherwise lose because it does not read that header from a peer.
    """
    labels = {label.strip().lower() for label in caller.labels if label.strip()}
    extra = headers.get(CLASSIFICATION_HEADER, "")
    labels.update(label.strip().lower() for label in extra.split(",") if label.strip())
    data = {
        "key": caller.key_name,
        "team": caller.team,
        "user": caller.user,
        "labels": sorted(labels),
        "strict_params": caller.strict_params,
        "identity": caller.identity,
    }
    # ASCII-only JSON escapes every control character, so the value is a valid header.
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"))


def decode_caller(value: str | None, peer: str) -> PeerCaller:
    """Read the caller header sent by the peer named ``peer``.

    Raises:
        InvalidRequest: the header is missing or not the expected JSON object.
    """
    if not value:
        raise InvalidRequest(
            f"The request from peer {peer} has no {PEER_CALLER_HEADER} header. Update that "
            "instance, which must send the caller's identity."
        )
    try:
        if len(value) > _MAX_CALLER_HEADER:
            raise ValueError(f"longer than {_MAX_CALLER_HEADER} characters")
        data = json.loads(value)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        key, team, user = data["key"], data["team"], data.get("user")
        labels = data.get("labels", [])
        strict = data.get("strict_params", False)
        identity = data.get("identity")
        if not (isinstance(key, str) and isinstance(team, str)):
            raise ValueError("'key' and 'team' must be strings")
        if user is not None and not isinstance(user, str):
            raise ValueError("'user' must be a string or null")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError("'labels' must be a list of strings")
        if not isinstance(strict, bool):
            raise ValueError("'strict_params' must be true or false")
        if identity is not None and not isinstance(identity, str):
            raise ValueError("'identity' must be a string or null")
    except (ValueError, KeyError) as exc:
        raise InvalidRequest(
            f"The {PEER_CALLER_HEADER} header from peer {peer} is invalid ({exc}). Both "
            "instances must run compatible Smartflow versions."
        ) from None
    return PeerCaller(key, team, user, tuple(labels), strict, identity=identity, peer=peer)


@dataclass(slots=True)
class ForwardedRequest:
    """The entry instance's facts about a request it forwarded here, for the usage event."""

    request_id: str
    entry_instance: str
    entry_site: str | None = None
    policy: PolicySummary | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)


def encode_usage(site: str, decision: Decision | None, attempts: Iterable[AttemptRecord]) -> str:
    """Encode the value of the usage header: the entry site, the request-side policy
    decision as names and counts, and the attempts made before forwarding."""
    data = {
        "site": site,
        "policy": _summary_dict(policy_summary(decision)) if decision is not None else None,
        "attempts": [[a.deployment, a.error, a.status] for a in attempts],
    }
    # ASCII-only JSON escapes every control character, so the value is a valid header.
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"))


def decode_usage(
    value: str, peer: str
) -> tuple[str | None, PolicySummary | None, list[AttemptRecord]]:
    """Read the usage header sent by the peer named ``peer``.

    Returns the entry site, the policy summary and the earlier attempts.

    Raises:
        InvalidRequest: the header is not the expected JSON object.
    """
    try:
        if len(value) > _MAX_USAGE_HEADER:
            raise ValueError(f"longer than {_MAX_USAGE_HEADER} characters")
        data = json.loads(value)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        site = data.get("site")
        if site is not None and not _is_name(site):
            raise ValueError(f"'site' must be a string of 1 to {_MAX_NAME_CHARS} characters")
        policy = data.get("policy")
        summary = _decode_summary(policy) if policy is not None else None
        attempts = [_decode_attempt(item) for item in data.get("attempts") or []]
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(
            f"The {PEER_USAGE_HEADER} header from peer {peer} is invalid ({exc}). Both "
            "instances must run compatible Smartflow versions."
        ) from None
    return site, summary, attempts


def _summary_dict(summary: PolicySummary) -> dict[str, Any]:
    return {f.name: getattr(summary, f.name) for f in fields(summary)}


_SUMMARY_LISTS = ("policies", "audit_policies", "rules", "labels")
_SUMMARY_COUNTS = ("request_entities", "response_entities")
_SUMMARY_TEXTS = ("blocked_by", "residency")


def _decode_summary(data: Any) -> PolicySummary:
    if not isinstance(data, dict):
        raise ValueError("'policy' must be a JSON object or null")
    unknown = set(data) - {f.name for f in fields(PolicySummary)}
    if unknown:
        raise ValueError(f"'policy' has unknown fields {sorted(unknown)}")
    for name in _SUMMARY_LISTS:
        items = data.get(name, [])
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ValueError(f"'policy.{name}' must be a list of strings")
    for name in _SUMMARY_COUNTS:
        counts = data.get(name, {})
        if not isinstance(counts, dict) or not all(_is_count(n) for n in counts.values()):
            raise ValueError(f"'policy.{name}' must map entity types to counts")
    actions = data.get("actions", {})
    if not isinstance(actions, dict) or not all(isinstance(a, str) for a in actions.values()):
        raise ValueError("'policy.actions' must map entity types to action names")
    for name in _SUMMARY_TEXTS:
        text = data.get(name)
        if text is not None and not isinstance(text, str):
            raise ValueError(f"'policy.{name}' must be a string or null")
    if not _is_count(data.get("errors", 0)):
        raise ValueError("'policy.errors' must be a count")
    return PolicySummary(**data)


def _decode_attempt(item: Any) -> AttemptRecord:
    if not (isinstance(item, list) and len(item) == 3):
        raise ValueError("each of 'attempts' must be [deployment, error, status]")
    deployment, error, status = item
    if not isinstance(deployment, str):
        raise ValueError("an attempt's deployment must be a string")
    if error is not None and not isinstance(error, str):
        raise ValueError("an attempt's error must be a string or null")
    if status is not None and not _is_count(status):
        raise ValueError("an attempt's status must be an integer or null")
    return AttemptRecord(deployment, error, status)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_name(value: Any) -> TypeGuard[str]:
    """Return whether ``value`` is a printable ASCII id or name that fits the event's columns."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_NAME_CHARS
        and value.isascii()
        and value.isprintable()
    )


class PeeringKeyStore(KeyStore):
    """Virtual keys, plus the peer credentials of the instances allowed to forward here.

    A request with the peer token header is authenticated by that token alone, and its
    caller comes from the caller header. Without the token header, the caller header is
    never read, so an ordinary caller cannot claim another identity.
    """

    def __init__(self, keys: KeyStore, peers: Mapping[str, str]) -> None:
        super().__init__()
        self._inner = keys
        self._peers = dict(peers)
        """SHA-256 of a peer credential to the peer's name."""

    def __len__(self) -> int:
        return len(self._inner)

    def add(self, digest: str, caller: Caller) -> None:
        self._inner.add(digest, caller)

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        token = headers.get(PEER_TOKEN_HEADER)
        if token is None:
            return self._inner.authenticate(headers)
        peer = self._peers.get(hash_key(token))
        if peer is None:
            raise AuthenticationError(
                f"Invalid peer credential in {PEER_TOKEN_HEADER}: no entry of peering.accept "
                "matches it. Check the sending instance's peering.sites token."
            )
        return decode_caller(headers.get(PEER_CALLER_HEADER), peer)


class PeeringDispatcher(Dispatcher):
    """The dispatcher with linked routing: peer deployments are forwarded, and a request
    that arrived from a peer is served only by this instance's own deployments."""

    def __init__(self, *args: Any, keys: KeyStore, site: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keys = keys
        """Authenticates the caller again when forwarding, to send its identity."""
        self.site = site

    async def complete(
        self, exchange: Exchange, deployments: list[Deployment], render: Callable[[Any], bytes]
    ) -> tuple[bytes, Deployment]:
        return await super().complete(exchange, self._route(exchange, deployments), render)

    async def open_stream(
        self,
        exchange: Exchange,
        deployments: list[Deployment],
        make_encoder: Callable[[], Encoder],
    ) -> OpenStream:
        return await super().open_stream(exchange, self._route(exchange, deployments), make_encoder)

    def _route(self, exchange: Exchange, deployments: list[Deployment]) -> list[Deployment]:
        """Bind peer deployments to the caller's dialect, or keep only local ones for a
        request that a peer forwarded here."""
        headers = exchange.client_headers
        hop = headers.get(PEER_HOP_HEADER)
        if hop is not None:
            return self._local_route(exchange, deployments, hop)
        routed = []
        for deployment in deployments:
            provider = deployment.provider
            if isinstance(provider, PeerProvider):
                deployment = replace(deployment, provider=provider.bound(exchange.dialect))
            routed.append(deployment)
        return routed

    def _local_route(
        self, exchange: Exchange, deployments: list[Deployment], hop: str
    ) -> list[Deployment]:
        chosen = exchange.client_headers.get(PEER_DEPLOYMENT_HEADER)
        local = [d for d in deployments if not isinstance(d.provider, PeerProvider)]
        if chosen:
            local = [d for d in local if d.label == chosen]
        if local:
            return local
        model = deployments[0].public_model if deployments else exchange.request.model
        raise NotFound(
            f"The instance at site {self.site} has no deployment {chosen or 'of its own'} for "
            f"model {model!r}, so it cannot serve the request that instance {hop[:100]!r} "
            "forwarded; a forwarded request is never forwarded again. Check that both "
            "instances have the same configuration version.",
            param="model",
        )

    def _payload(
        self, exchange: Exchange, deployment: Deployment, request: ChatRequest
    ) -> tuple[bytes, bool]:
        if not isinstance(deployment.provider, PeerProvider):
            return super()._payload(exchange, deployment, request)
        # The peer fits the parameters to its own deployment, so nothing is fitted here.
        exchange.normalized = None
        body = deployment.provider.passthrough_body(exchange.body, deployment.public_model)
        try:
            return orjson.dumps(body), True
        except orjson.JSONEncodeError as exc:
            raise InvalidRequest(
                "The request body is nested too deeply to forward (more than about 250 "
                "levels). Flatten the deepest object or schema."
            ) from exc

    async def _post(
        self, exchange: Exchange, deployment: Deployment, payload: bytes, *, stream: bool
    ) -> aiohttp.ClientResponse:
        provider = deployment.provider
        # Every attempt resets it, so it describes the attempt that served the request.
        _recorded_by.set(None)
        if not isinstance(provider, PeerProvider):
            return await super()._post(exchange, deployment, payload, stream=stream)
        caller = self.keys.authenticate(exchange.client_headers)
        # The dispatcher has already appended this attempt's record.
        earlier = [AttemptRecord(a.deployment, a.error, a.status) for a in exchange.attempts[:-1]]
        target = provider.peer_target(
            deployment.label,
            stream=stream,
            client_headers=exchange.client_headers,
            caller=encode_caller(caller, exchange.client_headers),
            request_id=exchange.request_id,
            usage=encode_usage(self.site, _entry_decision.get(), earlier),
        )
        try:
            response = await self.session.post(target.url, data=payload, headers=target.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _peer_failed(exc, provider) from exc
        if response.status >= 400:
            try:
                body = await response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                response.close()
                raise _peer_failed(exc, provider) from exc
            response.release()
            raise provider.parse_error(response.status, body, response.headers)
        recorded = response.headers.get(PEER_RECORDED_HEADER)
        if recorded:
            _recorded_by.set(recorded[:_MAX_NAME_CHARS])
        return response


def _peer_failed(exc: BaseException, provider: PeerProvider) -> UpstreamError:
    """Map a transport failure on the way to a peer, naming the peer instead of the provider."""
    return transport_error(
        exc,
        target=f"the instance serving site {provider.site}",
        provider=provider.name,
        timeout="in time",
        address=provider.url,
    )


class PeeringGateway(Gateway):
    """The request path of an instance that peers may forward to: it skips the policy for
    their requests, because the entry instance has already applied it."""

    def _evaluate_policy(
        self, caller: Caller, canonical: ChatRequest, request: web.Request, request_id: str
    ) -> PolicyRun | None:
        if isinstance(caller, PeerCaller):
            logger.info(
                "request %s: forwarded by peer %s (its request %s) for key %s of team %s",
                request_id,
                caller.peer,
                request.headers.get(PEER_REQUEST_ID_HEADER, "-")[:100],
                caller.key_name,
                caller.team,
            )
            if self.usage is not None:
                self._accept_forwarded(caller, request, request_id)
            return None
        run = super()._evaluate_policy(caller, canonical, request, request_id)
        _entry_decision.set(run.decision if run is not None else None)
        return run

    def _accept_forwarded(self, caller: PeerCaller, request: web.Request, request_id: str) -> None:
        """Keep the entry instance's details of a forwarded request for its usage event.

        Raises:
            InvalidRequest: the usage header is invalid.
        """
        headers = request.headers
        entry_id = headers.get(PEER_REQUEST_ID_HEADER)
        entry_instance = headers.get(PEER_HOP_HEADER)
        forwarded = ForwardedRequest(
            entry_id if _is_name(entry_id) else request_id,
            entry_instance if _is_name(entry_instance) else caller.peer,
        )
        # Set before the usage header is read, so an invalid header still leaves the
        # event of the failed request to the entry instance.
        _forwarded.set(forwarded)
        request[_FORWARDED_KEY] = True
        value = headers.get(PEER_USAGE_HEADER)
        if value is not None:
            site, policy, attempts = decode_usage(value, caller.peer)
            forwarded.entry_site, forwarded.policy, forwarded.attempts = site, policy, attempts


class PeeringUsageRecorder(UsageRecorder):
    """The usage recorder of an instance with linked routing: one event per request.

    The entry instance emits nothing for a request that the peer confirmed it records.
    The receiving instance emits a forwarded request it served successfully, with the
    entry instance's request id, site, policy summary and attempts, and nothing for one
    it failed with an error, whose event the entry instance records.
    """

    def emit(self, builder: UsageBuilder, status: int) -> UsageEvent | None:
        recorded_by = _recorded_by.get()
        if recorded_by is not None:
            logger.debug("usage: peer %s records the event of this request", recorded_by)
            return None
        forwarded = _forwarded.get()
        if forwarded is None:
            return super().emit(builder, status)
        if status >= 400:
            logger.debug(
                "usage: instance %s records the event of its failed request %s",
                forwarded.entry_instance,
                forwarded.request_id,
            )
            return None
        builder.set_forwarded(
            request_id=forwarded.request_id,
            entry_instance=forwarded.entry_instance,
            entry_site=forwarded.entry_site,
            policy=forwarded.policy,
            attempts=forwarded.attempts,
        )
        return super().emit(builder, status)


def attach_usage(app: web.Application, recorder: UsageRecorder) -> None:
    """Send the recorded header from ``app`` when ``recorder`` is a ``PeeringUsageRecorder``.

    The header goes with each successful response to a forwarded request while the
    recorder has a queue, because the recorder then records that request's event here.
    """
    if not isinstance(recorder, PeeringUsageRecorder):
        return

    async def confirm_recorded(request: web.Request, response: web.StreamResponse) -> None:
        if request.get(_FORWARDED_KEY) and response.status < 400 and recorder.queue is not None:
            response.headers[PEER_RECORDED_HEADER] = recorder.instance

    app.on_response_prepare.append(confirm_recorded)


def usage_recorder_class(settings: PeeringSettings) -> type[UsageRecorder]:
    """Return the usage recorder class of an instance with the ``settings`` of peering."""
    return PeeringUsageRecorder if settings.sites or settings.accept else UsageRecorder


@dataclass(slots=True)
class Peering:
    """The peering settings of one instance, with the peer credentials resolved."""

    instance: str
    site: str
    settings: PeeringSettings
    tokens: dict[str, Secret]
    """Peer site to the credential sent there."""
    _providers: dict[tuple[str, str], PeerProvider] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls,
        settings: PeeringSettings,
        *,
        instance: str,
        site: str,
        environ: Mapping[str, str],
    ) -> Peering | None:
        """Return the peering of an instance, or None when ``settings`` is empty.

        Raises:
            ConfigError: a peer credential is missing or unreadable.
        """
        if not settings.sites and not settings.accept:
            return None
        if site in settings.sites:
            raise ConfigError(
                f"peering.sites.{site}: this instance's own site cannot be served by a peer"
            )
        tokens = {name: _read_token(name, peer, environ) for name, peer in settings.sites.items()}
        return cls(instance, site, settings, tokens)

    def is_remote(self, site: str | None) -> bool:
        """Return whether a deployment at ``site`` is served by a peer."""
        return site is not None and site != self.site and site in self.settings.sites

    def deployment(
        self, public_model: str, entry: DeploymentSettings, *, provider_kind: str
    ) -> Deployment:
        """Return the deployment that forwards ``entry`` (at a peer's site) to that peer."""
        site = entry.site or self.site
        provider = self.remote_provider(entry.provider, provider_kind, site)
        if provider is None:
            raise ConfigError(f"no peer serves site {site!r}; list it in peering.sites")
        return Deployment(
            public_model,
            provider,
            entry.model,
            site=site,
            base_model=entry.base_model,
            pinned=entry.pinned,
        )

    def remote_provider(self, name: str, kind: str, site: str) -> PeerProvider | None:
        """Return the adapter that reaches provider ``name`` of ``site`` through its peer,
        or None when no peer serves that site."""
        if not self.is_remote(site):
            return None
        key = (site, name)
        provider = self._providers.get(key)
        if provider is None:
            provider = PeerProvider(
                name,
                kind=kind,
                site=site,
                url=self.settings.sites[site].url,
                token=self.tokens[site],
                instance=self.instance,
            )
            self._providers[key] = provider
        return provider

    def key_store(self, keys: KeyStore) -> KeyStore:
        """Return ``keys``, extended with the accepted peer credentials if there are any."""
        if not self.settings.accept:
            return keys
        return PeeringKeyStore(keys, {c.sha256: c.name for c in self.settings.accept})

    def dispatcher(self, *args: Any, keys: KeyStore, **kwargs: Any) -> PeeringDispatcher:
        """Build the dispatcher; the arguments are those of ``Dispatcher``."""
        return PeeringDispatcher(*args, keys=keys, site=self.site, **kwargs)

    def gateway(self, **kwargs: Any) -> Gateway:
        """Build the request path; the arguments are those of ``Gateway``."""
        return PeeringGateway(**kwargs)

    def usage_recorder(self, **kwargs: Any) -> UsageRecorder:
        """Build the usage recorder; the arguments are those of ``UsageRecorder``."""
        return PeeringUsageRecorder(**kwargs)

    def remote_only_providers(self, models: Mapping[str, Iterable[DeploymentSettings]]) -> set[str]:
        """Return the providers whose every deployment is served by a peer.

        Such providers are not built here, so they need no credentials at this instance.
        """
        remote: set[str] = set()
        local: set[str] = set()
        for deployments in models.values():
            for entry in deployments:
                (remote if self.is_remote(entry.site) else local).add(entry.provider)
        return remote - local


def _read_token(site: str, peer: PeerSettings, environ: Mapping[str, str]) -> Secret:
    if peer.token_file:
        path = Path(peer.token_file)
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"peering.sites.{site}.token_file: cannot read {path}: {exc.strerror}"
            ) from exc
        if not value:
            raise ConfigError(f"peering.sites.{site}.token_file: {path} is empty")
        return Secret(value)
    variable = peer.token_env or ""
    value = environ.get(variable, "").strip()
    if not value:
        raise ConfigError(
            f"peering.sites.{site}.token_env: the environment variable {variable} is not set; "
            "set it to the peer credential that the instance of that site accepts"
        )
    return Secret(value)
