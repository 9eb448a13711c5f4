"""The hybrid topology behind ``smartflow up``: a control plane and two linked instances.

- The control plane listens on 127.0.0.1:7778 and keeps its store under
  ``<data dir>/control`` (SQLite), or in PostgreSQL when a URL is given.
- Instance ``on-prem`` (site on-prem, 127.0.0.1:7775) calls OpenAI, Azure OpenAI and
  Anthropic. Instance ``cloud`` (site cloud, 127.0.0.1:7785) calls Bedrock, Gemini and
  Cohere. Each instance keeps its enrollment and last snapshot under
  ``<data dir>/<site>``.
- Both instances enroll with the control plane and take their providers, models, keys and
  policies from its snapshots. Each forwards the models of the other site to the other
  instance (linked routing), so either one serves every model.

A provider whose credentials are in the environment is used for real; every other one is
replaced by its simulator on 127.0.0.1. At each start, the control plane's built-in
providers, deployments, model aliases and development key are written again (the
simulators' ports change), while policies and every other object are kept.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartflow.auth.keys import hash_key
from smartflow.config.schema import GatewayConfig, ProviderSettings, parse_config
from smartflow.control import ControlPlaneSettings, RunningControlPlane, start_control_plane
from smartflow.control.models import (
    AdminTokenIn,
    DeploymentIn,
    EnrollmentTokenIn,
    ModelAliasIn,
    ProviderIn,
    VirtualKeyIn,
)
from smartflow.control.services.context import SYSTEM
from smartflow.control.services.kinds import KINDS
from smartflow.control.services.plane import ControlPlane
from smartflow.control.services.snapshots import current_policies
from smartflow.core.errors import AuthenticationError, ConfigError
from smartflow.policy.loading import BUILTIN_DEFAULT, load_policy_files
from smartflow.providers.base import Provider
from smartflow.sim.base import Simulator
from smartflow.stack import _PROVIDERS, DEFAULT_MODELS, _ProviderSpec
from smartflow.sync.linked import LinkedGateway, start_linked_gateway
from smartflow.sync.state import LinkFiles

__all__ = [
    "PROVIDER_SITES",
    "HybridPorts",
    "HybridStack",
    "InstanceInfo",
    "start_hybrid_stack",
]

logger = logging.getLogger(__name__)

PROVIDER_SITES = {
    "openai": "on-prem",
    "azure": "on-prem",
    "anthropic": "on-prem",
    "bedrock": "cloud",
    "gemini": "cloud",
    "cohere": "cloud",
}
"""The site whose instance calls each built-in provider."""

_PEER_TOKEN_ENV = "SMARTFLOW_PEER_TOKEN"
_ENROLLMENT_TTL_S = 600
_SYNC_WAIT_S = 30.0
_DEVELOPMENT_KEY = "development"


@dataclass(slots=True, frozen=True)
class HybridPorts:
    """TCP ports of the three services.

    The control plane may use 0 for a free port. The instances need fixed ports, because
    each one gets the other's address in its configuration before either starts.
    """

    control_plane: int = 7778
    on_prem: int = 7775
    cloud: int = 7785


@dataclass(slots=True, frozen=True)
class InstanceInfo:
    name: str
    site: str
    port: int


@dataclass(slots=True)
class HybridStack:
    """The running hybrid topology. ``stop`` ends every service it started."""

    control_plane: RunningControlPlane
    instances: dict[str, LinkedGateway]
    """Instance name to the running instance, on-prem first."""
    dev_key: str
    admin_token: str | None
    """The admin token registered at this start, or None when the store already had one."""
    data_dir: Path
    simulators: dict[str, tuple[Simulator, str]] = field(default_factory=dict)
    real: list[str] = field(default_factory=list)

    def summary(self, *, show_key: bool = True) -> str:
        """Return the text ``smartflow up`` prints: addresses, models, keys and a first request."""
        lines = [
            f"Smartflow hybrid stack ready; state under {self.data_dir}",
            "",
            f"Control plane: {self.control_plane.url} (admin API and sync stream; "
            f"OpenAPI at {self.control_plane.url}/openapi.json)",
        ]

        for name, instance in self.instances.items():
            providers = ", ".join(p for p, site in PROVIDER_SITES.items() if site == name)
            lines.append(
                f"Smartflow gateway ready at {instance.url} (instance {name}, site {name}: "
                f"{providers})"
            )
        lines += [
            "Both instances serve every model; a model of the other site is forwarded to "
            "the other instance.",
            "",
            "Models served:",
        ]

        for model, deployments in DEFAULT_MODELS.items():
            chain = " -> ".join(f"{provider}:{name}" for provider, name in deployments)
            site = PROVIDER_SITES[deployments[0][0]]
            lines.append(f"  {model:<26} {site:<8} {chain}")
        lines.append("")

        for name, (_, url) in self.simulators.items():
            lines.append(f"Provider {name}: simulated at {url} (no credentials set)")
        for name in self.real:
            lines.append(f"Provider {name}: real API (credentials from the environment)")
        lines.append("")

        key = self.dev_key if show_key else "<your key>"
        if show_key:
            lines.append(f"Development virtual key: {self.dev_key}")
        else:
            lines.append(
                "Development virtual key: the one given with --dev-key or $SMARTFLOW_DEV_KEY"
            )
        if self.admin_token is not None:
            lines.append(f"Admin token (role admin, printed only this once): {self.admin_token}")
        else:
            lines.append(
                "Admin token: printed when this data directory was first used; if it is "
                "lost, start once with --new-admin-token"
            )

        first = next(iter(self.instances.values()))
        body = '{"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "Hello"}]}'
        lines += [
            "",
            "Try it (a cloud model through the on-prem instance):",
            f'  curl {first.url}/v1/chat/completions -H "Authorization: Bearer {key}" '
            f"-H 'Content-Type: application/json' -d '{body}'",
        ]
        return "\n".join(lines)

    async def stop(self) -> None:
        for instance in self.instances.values():
            await instance.stop()
        await self.control_plane.stop()
        for simulator, _ in self.simulators.values():
            await simulator.stop()


async def start_hybrid_stack(
    *,
    host: str,
    ports: HybridPorts,
    data_dir: Path,
    dev_key: str,
    database_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    new_admin_token: bool = False,
) -> HybridStack:
    """Start the control plane, seed it, and start the two linked instances.

    Args:
        host: Address every service listens on, and the instances use to reach each
            other and the control plane.
        ports: TCP ports of the services.
        data_dir: Directory for all state: ``control``, ``on-prem`` and ``cloud``.
        dev_key: The development virtual key that both instances accept.
        database_url: The control plane's store; default SQLite under ``data_dir``.
        environ: Variables with provider credentials; default ``os.environ``.
        new_admin_token: Register another admin token and report it in the summary, for
            an operator who lost the one printed at the first start.

    Raises:
        ConfigError: a setting, the store or an enrollment is unusable.
        OSError: a port is in use.
    """
    env = os.environ if environ is None else environ
    # A port taken half-way through the first start would leave an enrolled data
    # directory whose admin token was never printed, so check them all first.
    _check_ports_free(host, ports)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stack = _Starting(env)
    try:
        await stack.start_simulators()
        admin_token = "sf-admin-" + secrets.token_urlsafe(32)
        control = await start_control_plane(
            ControlPlaneSettings(
                host=host,
                port=ports.control_plane,
                state_dir=data_dir / "control",
                database_url=database_url,
                bootstrap_admin_token=admin_token,
                sync_poll_interval_s=1.0,
            )
        )
        stack.control = control
        registered = await _token_registered(control.plane, admin_token)
        if new_admin_token and not registered:
            admin_token = await _register_admin_token(control.plane)
            registered = True
        await _seed(control.plane, stack.settings, dev_key)
        instances = [
            InstanceInfo("on-prem", "on-prem", ports.on_prem),
            InstanceInfo("cloud", "cloud", ports.cloud),
        ]
        await stack.start_instances(host, control, instances, data_dir)
        await _wait_for_head(control, stack.instances)
    except BaseException:
        await stack.stop()
        raise
    return HybridStack(
        control_plane=control,
        instances=stack.instances,
        dev_key=dev_key,
        admin_token=admin_token if registered else None,
        data_dir=data_dir,
        simulators=stack.simulators,
        real=stack.real,
    )


class _Starting:
    """The services started so far, so a failed start can stop them again."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.simulators: dict[str, tuple[Simulator, str]] = {}
        self.adapters: dict[str, Provider] = {}
        """Adapters of simulated providers, by provider name."""
        self.settings: dict[str, ProviderSettings] = {}
        self.real: list[str] = []
        self.control: RunningControlPlane | None = None
        self.instances: dict[str, LinkedGateway] = {}

    async def start_simulators(self) -> None:
        for spec in _PROVIDERS:
            if all(self.environ.get(variable) for variable in spec.real_when):
                self.settings[spec.name] = ProviderSettings.model_validate(
                    spec.real_config(self.environ)
                )
                self.real.append(spec.name)
                continue
            simulator = spec.simulator()
            url = await simulator.start()
            self.simulators[spec.name] = (simulator, url)
            self.adapters[spec.name] = spec.adapter(url)
            self.settings[spec.name] = _simulated_settings(spec, url)

    async def start_instances(
        self,
        host: str,
        control: RunningControlPlane,
        instances: list[InstanceInfo],
        data_dir: Path,
    ) -> None:
        peer_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        tokens = {info.site: secrets.token_urlsafe(32) for info in instances}
        for info in instances:
            others = [other for other in instances if other is not info]
            config = _instance_config(info, others, control.url, peer_host, tokens, data_dir)
            token = await _enrollment_token(control.plane, config, info.site)
            adapters = {
                name: adapter
                for name, adapter in self.adapters.items()
                if PROVIDER_SITES[name] == info.site
            }
            self.instances[info.name] = await start_linked_gateway(
                config,
                host=host,
                port=info.port,
                enroll_token=token,
                environ={**self.environ, _PEER_TOKEN_ENV: tokens[info.site]},
                providers=adapters,
                wait_for_sync_s=_SYNC_WAIT_S,
            )

    async def stop(self) -> None:
        for instance in self.instances.values():
            await instance.stop()
        if self.control is not None:
            await self.control.stop()
        for simulator, _ in self.simulators.values():
            await simulator.stop()


def _simulated_settings(spec: _ProviderSpec, url: str) -> ProviderSettings:
    """Settings stored centrally for a simulated provider.

    The instance replaces the adapter with one for the simulator, so these settings only
    name the provider type and show where the simulator runs.
    """
    values: dict[str, Any] = {
        "openai": {"type": "openai", "base_url": url + "/v1"},
        "azure": {"type": "azure_openai", "base_url": url, "api_version": "2024-10-21"},
        "anthropic": {"type": "anthropic", "base_url": url},
        "bedrock": {"type": "bedrock", "base_url": url, "region": "us-east-1"},
        "gemini": {"type": "gemini", "base_url": url},
        "cohere": {"type": "cohere", "base_url": url},
    }[spec.name]
    return ProviderSettings.model_validate(values)


def _deployment_name(provider: str, model: str) -> str:
    """Return a valid object name for a deployment, such as ``bedrock.meta.llama3-1-70b``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{provider}.{model}")[:63]


async def _seed(
    plane: ControlPlane, settings: Mapping[str, ProviderSettings], dev_key: str
) -> None:
    """Write the built-in providers, deployments, model aliases and development key, and
    the default policy when the store has no policy yet, in one transaction: a start makes
    at most one snapshot version, and none when nothing changed."""
    kinds = {kind.object_type: kind for kind in KINDS}
    async with plane.store.write(SYSTEM) as tx:
        for name, provider_settings in settings.items():
            body = ProviderIn(site=PROVIDER_SITES[name], settings=provider_settings)
            await plane.objects.put_in(tx, kinds["provider"], name, body)
        for model, deployments in DEFAULT_MODELS.items():
            names = []
            for provider, upstream in deployments:
                name = _deployment_name(provider, upstream)
                body_in = DeploymentIn(provider=provider, model=upstream)
                await plane.objects.put_in(tx, kinds["deployment"], name, body_in)
                names.append(name)
            alias = ModelAliasIn(deployments=names)
            await plane.objects.put_in(tx, kinds["model_alias"], model, alias)
        key = VirtualKeyIn(sha256=hash_key(dev_key))
        await plane.objects.put_in(tx, kinds["virtual_key"], _DEVELOPMENT_KEY, key)
        if not await current_policies(tx.session):
            for document in load_policy_files([BUILTIN_DEFAULT]):
                await plane.policies.put_in(tx, document.metadata.name, document.to_dict())


async def _wait_for_head(
    control: RunningControlPlane, instances: Mapping[str, LinkedGateway]
) -> None:
    """Wait until every instance applies the newest version, so none serves a saved one
    whose simulator addresses are stale."""
    head = await control.plane.instances.head()
    for name, instance in instances.items():
        try:
            await instance.agent.wait_for_version(head, _SYNC_WAIT_S)
        except TimeoutError:
            logger.warning(
                "instance %s has not applied version %d after %.0f s; it serves version %d",
                name,
                head,
                _SYNC_WAIT_S,
                instance.agent.applied_version,
            )


def _check_ports_free(host: str, ports: HybridPorts) -> None:
    """Raise ConfigError naming the option of the first port that cannot be bound."""
    options = (
        ("--control-plane-port", ports.control_plane),
        ("--port", ports.on_prem),
        ("--cloud-port", ports.cloud),
    )
    for option, port in options:
        if port == 0:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise ConfigError(
                    f"port {port} on {host} is not available ({exc.strerror}); choose "
                    f'another with {option}, for example make up ARGS="{option} {port + 1000}"'
                ) from None


async def _register_admin_token(plane: ControlPlane) -> str:
    """Register a new admin-role token named after the time, and return it."""
    name = "recovered-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    created = await plane.access.create_admin_token(AdminTokenIn(name=name, role="admin"), SYSTEM)
    logger.info("registered admin token %r at the operator's request", name)
    return created.token


async def _token_registered(plane: ControlPlane, token: str) -> bool:
    try:
        await plane.access.authenticate_admin(token)
    except AuthenticationError:
        return False
    return True


async def _enrollment_token(plane: ControlPlane, config: GatewayConfig, site: str) -> str | None:
    """Return a one-time enrollment token, or None when the instance is already enrolled.

    Raises:
        ConfigError: the instance enrolled with a control plane at another address.
    """
    assert config.control_plane is not None
    files = LinkFiles(Path(config.state_dir), config.control_plane.secret_key_env)
    enrollment = files.load_enrollment()
    if enrollment is not None:
        # The instance dials the address it enrolled with, so a moved control plane
        # would leave it serving its saved snapshot forever.
        if enrollment.control_plane.rstrip("/") != config.control_plane.url.rstrip("/"):
            raise ConfigError(
                f"{config.state_dir} belongs to an instance enrolled with the control plane "
                f"at {enrollment.control_plane}, not {config.control_plane.url}: start with "
                "the same --host and --control-plane-port as before, or use a new --data-dir"
            )
        return None
    body = EnrollmentTokenIn(
        site=site, ttl_s=_ENROLLMENT_TTL_S, description="enrollment by smartflow up"
    )
    created = await plane.access.create_enrollment_token(body, SYSTEM)
    return created.token


def _instance_config(
    info: InstanceInfo,
    peers: list[InstanceInfo],
    control_url: str,
    peer_host: str,
    tokens: Mapping[str, str],
    data_dir: Path,
) -> GatewayConfig:
    return parse_config(
        {
            "state_dir": str(data_dir / info.site),
            "server": {"instance": info.name, "site": info.site},
            # Events feed the control plane's dashboard; they ship over the link.
            "usage": {"enabled": True},
            "control_plane": {"url": control_url, "name": info.name, "site": info.site},
            "peering": {
                "sites": {
                    peer.site: {
                        "url": f"http://{peer_host}:{peer.port}",
                        "token_env": _PEER_TOKEN_ENV,
                    }
                    for peer in peers
                },
                "accept": [
                    {"name": peer.name, "sha256": hash_key(tokens[peer.site])} for peer in peers
                ],
            },
        },
        f"the {info.name} instance of smartflow up",
    )
