"""A gateway with its interception listener, and TLS simulators standing in for the real
hosts, all on loopback addresses. Shared by the interception tests."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.gateway.app import USAGE_QUEUE_KEY, RunningGateway, build_app, start_gateway
from smartflow.intercept.certs import create_ca, issue_leaf, load_ca
from smartflow.intercept.listener import INTERCEPT_KEY
from smartflow.intercept.service import InterceptService
from smartflow.sim.anthropic import AnthropicSimulator
from smartflow.sim.base import Simulator
from smartflow.sim.openai import OpenAISimulator
from smartflow.usage.events import UsageEvent

__all__ = [
    "CALLER_KEY",
    "HOSTS",
    "SALT",
    "VIRTUAL_KEY",
    "Pki",
    "Stack",
    "client_session",
    "make_pki",
    "start_recording_upstream",
    "start_stack",
]

HOSTS = ("api.openai.com", "api.anthropic.com")
CALLER_KEY = "sk-caller-test-0123456789"
VIRTUAL_KEY = "sk-sf-intercept-test-0123456789"
SALT = "test-identity-salt"


@dataclass(slots=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_pki(directory: Path) -> Pki:
    """Create a CA and one certificate for both intercepted hosts."""
    ca = create_ca(directory / "ca")
    leaf = issue_leaf(ca, list(HOSTS), directory / "leaf")
    return Pki(directory / "ca" / "ca.pem", leaf.cert_file, leaf.key_file)


async def _start_tls(sim: Simulator, pki: Pki, host: str, port: int) -> tuple[web.AppRunner, int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    runner = web.AppRunner(sim.make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=context)
    await site.start()
    return runner, site.port


class FixedResolver(AbstractResolver):
    """Resolve every name to one address and port, as a redirected DNS would."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": self.host,
                "port": self.port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


def client_session(pki: Pki, port: int, **options: Any) -> aiohttp.ClientSession:
    """A client whose DNS sends both hosts to the listener, and which trusts the test CA."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    connector = aiohttp.TCPConnector(resolver=FixedResolver("127.0.0.1", port), ssl=context)
    return aiohttp.ClientSession(connector=connector, **options)


@dataclass(slots=True)
class Stack:
    gateway: RunningGateway
    app: web.Application
    openai: OpenAISimulator
    anthropic: AnthropicSimulator
    pki: Pki
    runners: list[web.AppRunner] = field(default_factory=list)

    @property
    def service(self) -> InterceptService:
        return self.app[INTERCEPT_KEY]

    @property
    def port(self) -> int:
        assert self.service.port is not None
        return self.service.port

    async def usage_events(self) -> list[UsageEvent]:
        queue = self.app[USAGE_QUEUE_KEY]
        await queue.flush()
        return [UsageEvent.from_json(item.body) for item in await queue.read_batch(1000)]

    async def stop(self) -> None:
        await self.gateway.stop()
        for runner in self.runners:
            await runner.cleanup()


def stack_config(pki: Pki, upstream: dict[str, str], **intercept: Any) -> dict[str, Any]:
    hosts = {
        "api.openai.com": {"dialect": "openai", "addresses": [upstream["api.openai.com"]]},
        "api.anthropic.com": {
            "dialect": "anthropic",
            "addresses": [upstream["api.anthropic.com"]],
        },
    }
    for name, overrides in intercept.pop("host_overrides", {}).items():
        hosts[name] = {**hosts.get(name, {}), **overrides}
    certificates = [{"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)}]
    certificates += intercept.pop("extra_certificates", [])
    return {
        "server": {"access_log": False, "instance": "gw-test"},
        "policy_files": ["builtin:default"],
        "usage": {"enabled": True},
        "keys": [{"name": "test", "sha256": hash_key(VIRTUAL_KEY), "team": "qa"}],
        "retry": {"attempts_per_deployment": 1},
        "timeouts": {"connect_s": 2, "read_s": 10},
        "intercept": {
            "enabled": True,
            "host": intercept.pop("listen_host", "127.0.0.1"),
            "port": intercept.pop("listen_port", 0),
            "certificates": certificates,
            "hosts": hosts,
            "upstream_ca_file": str(pki.ca_file),
            "identity": {"salt_env": "TEST_SALT", **intercept.pop("identity", {})},
            **intercept,
        },
    }


async def start_recording_upstream(
    pki: Pki, host: str, directory: Path
) -> tuple[web.AppRunner, int, list[tuple[str, str, bytes]], Path, Path]:
    """Serve ``host`` over TLS on 127.0.0.1, responding with 200 and recording every request.

    Returns the runner, port, records (method, path with query, body) and the new
    certificate and key files for ``host``.
    """
    ca = load_ca(pki.ca_file.parent)
    leaf = issue_leaf(ca, [host], directory)
    records: list[tuple[str, str, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        records.append((request.method, request.path_qs, await request.read()))
        return web.json_response({"recorded": True})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", record)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(leaf.cert_file, leaf.key_file)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    return runner, site.port, records, leaf.cert_file, leaf.key_file


async def start_stack(
    directory: Path,
    *,
    sim_host: str = "127.0.0.1",
    environ: dict[str, str] | None = None,
    reuse_pki: Pki | None = None,
    **intercept: Any,
) -> Stack:
    """Start TLS simulators for both hosts and a gateway that intercepts them."""
    pki = reuse_pki or make_pki(directory)
    openai_sim = OpenAISimulator(api_keys=[CALLER_KEY, "sk-org-openai"])
    anthropic_sim = AnthropicSimulator(api_keys=[CALLER_KEY, "sk-org-anthropic"])
    runners = []
    upstream = {}
    for name, sim in (("api.openai.com", openai_sim), ("api.anthropic.com", anthropic_sim)):
        runner, port = await _start_tls(sim, pki, sim_host, 0)
        runners.append(runner)
        upstream[name] = f"{sim_host}:{port}"
    upstream.update(intercept.pop("upstream", {}))
    config = parse_config(stack_config(pki, upstream, **intercept))
    env = {"TEST_SALT": SALT, **(environ or {})}
    app = build_app(config, environ=env)
    gateway = await start_gateway(app, "127.0.0.1", 0)
    return Stack(gateway, app, openai_sim, anthropic_sim, pki, runners)
