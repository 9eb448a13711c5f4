"""Provider adapters and the router of an intercepted host.

Every model a caller names goes to the real host it addressed, with the caller's
credential or the organisation's (see ``identity``) and the hop header.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import orjson

from smartflow.core.errors import UpstreamError
from smartflow.intercept.identity import InterceptIdentity
from smartflow.intercept.loop import HOP_HEADER
from smartflow.providers.anthropic import AnthropicProvider
from smartflow.providers.base import Deployment, Provider, Secret, Target
from smartflow.providers.openai import OpenAIProvider
from smartflow.routing.router import Router

__all__ = ["CallerKeyRejected", "HostRouter", "build_host_provider"]

_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key"})
# OpenAI headers that select the account or API behaviour, sent on as the caller set them.
_OPENAI_FORWARDED = ("openai-organization", "openai-project", "openai-beta")
_MAX_ROUTES = 1000


class CallerKeyRejected(UpstreamError):
    """The real host rejected the caller's own key: the caller's problem, so a 401."""

    status = 401
    code = "authentication_failed"


class _Intercepted:
    """The credential and hop-header handling shared by the intercepted adapters."""

    identity: InterceptIdentity
    hop_id: str
    credential_header: str

    def _finish(self, target: Target, client_headers: Mapping[str, str]) -> Target:
        headers = {k: v for k, v in target.headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
        headers.update(
            self.identity.upstream_credentials(client_headers, self.credential_header).headers
        )
        headers[HOP_HEADER] = self.hop_id
        return Target(target.url, headers)

    def _caller_error(self, error: UpstreamError, body: bytes) -> UpstreamError:
        # With the caller's own key upstream, a 401 or 403 is about their key, not ours,
        # so the host's own message reaches the caller with the host's status.
        status = error.upstream_status
        if self.identity.mode != "passthrough" or status not in (401, 403):
            return error
        rejected = CallerKeyRejected(
            _error_message(body) or f"{error.provider} rejected the API key (HTTP {status}).",
            provider=error.provider,
            upstream_status=status,
        )
        rejected.status = status
        return rejected


def _error_message(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


class InterceptedOpenAI(_Intercepted, OpenAIProvider):
    credential_header = "authorization"

    def __init__(self, host: str, identity: InterceptIdentity, hop_id: str) -> None:
        # The key given here is never sent: _finish puts the caller's or organisation's.
        super().__init__(host, api_key=Secret(""), base_url=f"https://{host}/v1")
        self.identity = identity
        self.hop_id = hop_id

    def chat_target(self, model: str, *, stream: bool, client_headers: Mapping[str, str]) -> Target:
        target = self._finish(
            super().chat_target(model, stream=stream, client_headers=client_headers),
            client_headers,
        )
        for name in _OPENAI_FORWARDED:
            value = client_headers.get(name)
            if value:
                target.headers[name] = value
        return target

    def parse_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return self._caller_error(super().parse_error(status, body, headers), body)


class InterceptedAnthropic(_Intercepted, AnthropicProvider):
    credential_header = "x-api-key"

    def __init__(self, host: str, identity: InterceptIdentity, hop_id: str) -> None:
        super().__init__(host, api_key=Secret(""), base_url=f"https://{host}")
        self.identity = identity
        self.hop_id = hop_id

    def chat_target(self, model: str, *, stream: bool, client_headers: Mapping[str, str]) -> Target:
        return self._finish(
            super().chat_target(model, stream=stream, client_headers=client_headers),
            client_headers,
        )

    def parse_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return self._caller_error(super().parse_error(status, body, headers), body)


def build_host_provider(
    host: str, dialect: str, identity: InterceptIdentity, hop_id: str
) -> Provider:
    if dialect == "anthropic":
        return InterceptedAnthropic(host, identity, hop_id)
    return InterceptedOpenAI(host, identity, hop_id)


class HostRouter(Router):
    """Route every model name to the one intercepted host, under the caller's model name."""

    def __init__(self, provider: Provider, site: str) -> None:
        super().__init__({})
        self._provider = provider
        self._site = site
        self._deployments: dict[str, list[Deployment]] = {}

    @property
    def models(self) -> Iterable[str]:
        return ()

    def deployments(self, model: str) -> list[Deployment]:
        route = self._deployments.get(model)
        if route is None:
            route = [Deployment(model, self._provider, model, site=self._site)]
            if len(self._deployments) < _MAX_ROUTES:
                self._deployments[model] = route
        return route
