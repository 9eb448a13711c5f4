"""The runtime state of a linked instance, built from one verified snapshot.

A snapshot becomes one immutable :class:`RuntimeState` with its own ``Gateway``
(keys, routes, policy evaluator, normalisation profiles). Building it is the
validation step: whatever fails to build rejects the whole version, and nothing of
it reaches requests.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from botocore.credentials import Credentials  # type: ignore[import-untyped]
from pydantic import ValidationError

from smartflow.auth.keys import Caller, KeyStore
from smartflow.config.schema import GatewayConfig
from smartflow.core.errors import ConfigError
from smartflow.gateway.embeddings import EmbeddingsEndpoint
from smartflow.gateway.handlers import Gateway
from smartflow.gateway.peering import Peering
from smartflow.gateway.upstream import Dispatcher
from smartflow.normalize import load_profiles
from smartflow.policy.documents import PolicyValidationError
from smartflow.policy.engine import Evaluator, compile_policies
from smartflow.providers.base import Deployment, Provider
from smartflow.providers.bedrock import BedrockProvider
from smartflow.providers.registry import build_provider
from smartflow.routing.router import Router
from smartflow.sync.protocol import (
    Snapshot,
    SnapshotContent,
    SnapshotProvider,
    canonical_json,
    snapshot_policy_documents,
)
from smartflow.usage.recorder import UsageRecorder

__all__ = ["RuntimeBuilder", "RuntimeState", "SnapshotInvalid"]

logger = logging.getLogger(__name__)

# Variable name under which a snapshot's API key is passed to ``build_provider``. The
# mapping exists only for that call, so the key never enters the process environment.
_SNAPSHOT_KEY_VARIABLE = "SMARTFLOW_SNAPSHOT_API_KEY"


class SnapshotInvalid(ValueError):
    """A verified snapshot that this instance cannot apply; the message gives the reason."""


@dataclass(frozen=True, slots=True)
class RuntimeState:
    """Everything requests use from one snapshot version; replaced whole, never changed."""

    version: int
    snapshot: Snapshot
    gateway: Gateway
    embeddings: EmbeddingsEndpoint
    local_models: frozenset[str]
    """Public models with at least one deployment this instance serves itself."""
    remote_models: dict[str, list[str]] = field(default_factory=dict)
    """Public models served only at other sites, with those sites in order."""


class RuntimeBuilder:
    """Builds runtime states for one instance, reusing unchanged provider adapters.

    ``providers`` replaces the adapter of a provider by name, whatever the snapshot
    contains for it; ``smartflow up`` uses it to point providers at simulators.
    ``remote_provider`` returns the adapter that reaches a provider of another site
    (linked routing), or None to leave that provider out; without it, deployments at
    other sites are left out of the routes and listed in ``RuntimeState.remote_models``.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        site: str,
        environ: Mapping[str, str] | None = None,
        providers: Mapping[str, Provider] | None = None,
        usage: UsageRecorder | None = None,
        remote_provider: Callable[[str, SnapshotProvider], Provider | None] | None = None,
    ) -> None:
        self.config = config
        self.peering = Peering.from_config(
            config.peering,
            instance=(config.control_plane.name if config.control_plane else None)
            or config.server.instance,
            site=site,
            environ=os.environ if environ is None else environ,
        )
        """Linked routing from the ``peering`` section; None when it is empty."""
        if remote_provider is None and self.peering is not None:
            peering = self.peering

            def remote_provider(name: str, provider: SnapshotProvider) -> Provider | None:
                return peering.remote_provider(name, provider.settings.type, provider.site)

        self._remote_provider = remote_provider
        self.site = site
        self.session: aiohttp.ClientSession | None = None
        """The shared upstream session; set before the first ``build``."""
        self._environ = environ
        self._overrides = dict(providers or {})
        self._usage = usage
        self._adapters: dict[str, tuple[str, Provider]] = {}

    def build(self, snapshot: Snapshot) -> RuntimeState:
        """Build the runtime state of ``snapshot``.

        Raises:
            SnapshotInvalid: a provider, model, policy or profile cannot be built.
        """
        if self.session is None:
            raise RuntimeError("RuntimeBuilder.session must be set before build")
        content = snapshot.content
        adapters, fingerprints = self._build_adapters(content)
        routes, remote = self._routes(content, adapters)
        try:
            profiles = load_profiles(
                self.config.normalization.profiles_dir,
                overrides=[profile.document for profile in content.normalization_profiles],
            )
        except (ConfigError, ValueError) as exc:
            raise SnapshotInvalid(f"normalization_profiles: {exc}") from exc
        evaluator = _compile(content)
        keys: KeyStore = KeyStore(
            (k.sha256, Caller(k.name, k.team, k.user, tuple(k.labels), k.strict_params))
            for k in content.keys
        )
        dispatcher_options: dict[str, Any] = {
            "read_timeout": self.config.timeouts.read_s,
            "profiles": profiles,
            "image_fetch": self.config.image_fetch,
        }
        if self.peering is None:
            dispatcher = Dispatcher(self.session, self.config.retry, **dispatcher_options)
        else:
            keys = self.peering.key_store(keys)
            dispatcher = self.peering.dispatcher(
                self.session, self.config.retry, keys=keys, **dispatcher_options
            )
        gateway = (Gateway if self.peering is None else self.peering.gateway)(
            usage=self._usage,
            router=Router(routes),
            keys=keys,
            dispatcher=dispatcher,
            max_body_bytes=self.config.server.max_body_bytes,
            access_log=self.config.server.access_log,
            owners={model: route[0].provider.kind for model, route in routes.items()},
            strict_params=self.config.normalization.strict,
            policy=evaluator,
            site=self.site,
        )
        # Commit the adapter cache only once the whole version has built.
        self._adapters = {
            name: (fingerprints[name], adapter)
            for name, adapter in adapters.items()
            if name in fingerprints
        }
        return RuntimeState(
            version=snapshot.version,
            snapshot=snapshot,
            gateway=gateway,
            embeddings=EmbeddingsEndpoint(gateway),
            local_models=frozenset(routes),
            remote_models=remote,
        )

    def _build_adapters(
        self, content: SnapshotContent
    ) -> tuple[dict[str, Provider], dict[str, str]]:
        adapters: dict[str, Provider] = {}
        fingerprints: dict[str, str] = {}
        for name, provider in content.providers.items():
            if name in self._overrides:
                adapters[name] = self._overrides[name]
                continue
            if provider.site != self.site:
                remote = self._remote_provider
                adapter = remote(name, provider) if remote is not None else None
                if adapter is not None:
                    adapters[name] = adapter
                continue
            fingerprint = _fingerprint(provider)
            cached = self._adapters.get(name)
            if cached is not None and cached[0] == fingerprint:
                adapters[name] = cached[1]
            else:
                adapters[name] = _build_adapter(name, provider, self._environ)
            fingerprints[name] = fingerprint
        return adapters, fingerprints

    def _routes(
        self, content: SnapshotContent, adapters: Mapping[str, Provider]
    ) -> tuple[dict[str, list[Deployment]], dict[str, list[str]]]:
        routes: dict[str, list[Deployment]] = {}
        remote: dict[str, list[str]] = {}
        for model, deployments in content.models.items():
            local: list[Deployment] = []
            for entry in deployments:
                adapter = adapters.get(entry.provider)
                if adapter is None:
                    continue
                local.append(
                    Deployment(
                        model,
                        adapter,
                        entry.model,
                        site=entry.site or self.site,
                        base_model=entry.base_model,
                        pinned=entry.pinned,
                    )
                )
            if local:
                routes[model] = local
            else:
                remote[model] = [entry.site or "" for entry in deployments]
        return routes, remote


def _compile(content: SnapshotContent) -> Evaluator | None:
    documents = snapshot_policy_documents(content)
    if not documents:
        return None
    try:
        return compile_policies(documents)
    except (PolicyValidationError, ConfigError, ValueError) as exc:
        raise SnapshotInvalid(f"policies: {exc}") from exc


def _fingerprint(provider: SnapshotProvider) -> str:
    secrets = provider.credentials.revealed() if provider.credentials else {}
    data = {"settings": provider.settings.model_dump(mode="json"), "credentials": secrets}
    return hashlib.sha256(canonical_json(data)).hexdigest()


def _build_adapter(
    name: str, provider: SnapshotProvider, environ: Mapping[str, str] | None
) -> Provider:
    """Build one adapter with the snapshot's credentials, or else the local environment's.

    Raises:
        SnapshotInvalid: the settings or credentials do not make a working adapter.
    """
    settings = provider.settings
    secrets = provider.credentials.revealed() if provider.credentials else {}
    try:
        if not secrets:
            return build_provider(name, settings, environ)
        if settings.type == "bedrock":
            assert settings.region is not None  # ProviderSettings requires it for bedrock
            credentials = Credentials(
                secrets["aws_access_key_id"],
                secrets["aws_secret_access_key"],
                secrets.get("aws_session_token"),
            )
            return BedrockProvider(
                name,
                region=settings.region,
                credentials=credentials,
                endpoint_url=settings.base_url,
                api=settings.api,
            )
        if "api_key" not in secrets:
            # TODO: build Vertex AI adapters from a service-account JSON in the snapshot;
            # today only a static access token ('api_key') works for vertex_gemini.
            raise ConfigError(
                "only 'api_key' credentials can be used from a snapshot for a "
                f"{settings.type} provider"
            )
        local = settings.model_copy(
            update={
                "api_key_env": _SNAPSHOT_KEY_VARIABLE,
                "api_key_file": None,
                "credentials_file": None,
            }
        )
        return build_provider(name, local, {_SNAPSHOT_KEY_VARIABLE: secrets["api_key"]})
    except (ConfigError, ValidationError, ValueError, KeyError) as exc:
        raise SnapshotInvalid(f"providers.{name}: {exc}") from exc
