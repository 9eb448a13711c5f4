"""Cost of the interception listener against the plain listener, in one gateway process.

Starts a TLS OpenAI simulator (standing in for api.openai.com) and one gateway that
serves both listeners in front of it: the plain HTTP listener with a virtual key, and the
interception listener (TLS, SNI, host dispatch, identity hash, loop checks) with the
caller's own key. Measures, sequentially and on 127.0.0.1:

- connection setup: a TCP connect to the plain listener against a TCP connect plus TLS
  handshake (ECDSA P-256 leaf, TLS 1.3) to the interception listener;
- added latency per request with keep-alive: non-streamed chat requests on one reused
  connection per listener, after a warm-up. The default policy runs on both paths.

Usage: .venv/bin/python bench/intercept_case.py [--connections N] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.gateway.app import build_app, start_gateway
from smartflow.intercept.certs import create_ca, issue_leaf
from smartflow.intercept.listener import INTERCEPT_KEY
from smartflow.sim.openai import OpenAISimulator

VIRTUAL_KEY = "sk-sf-bench-0123456789abcdef"
CALLER_KEY = "sk-bench-caller"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}


class _ToListener(AbstractResolver):
    def __init__(self, port: int) -> None:
        self.port = port

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": self.port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "mean": statistics.fmean(ordered) * 1000,
        "p50": ordered[len(ordered) // 2] * 1000,
        "p90": ordered[int(len(ordered) * 0.9)] * 1000,
    }


async def _connects(port: int, context: ssl.SSLContext | None, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        _, writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=context,
            server_hostname="api.openai.com" if context else None,
        )
        samples.append(time.perf_counter() - started)
        writer.close()
        await writer.wait_closed()
    return samples


async def _requests(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], count: int
) -> list[float]:
    samples = []
    for number in range(count + 20):
        started = time.perf_counter()
        async with session.post(url, json=BODY, headers=headers) as response:
            await response.read()
            assert response.status == 200, await response.text()
        if number >= 20:
            samples.append(time.perf_counter() - started)
    return samples


async def run(directory: Path, connections: int, requests: int) -> dict[str, dict[str, float]]:
    os.chdir(directory)
    leaf_file, key_file = directory / "api.openai.com.pem", directory / "api.openai.com-key.pem"
    sim = OpenAISimulator()
    sim_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sim_context.load_cert_chain(leaf_file, key_file)
    sim_runner = web.AppRunner(sim.make_app(), access_log=None)
    await sim_runner.setup()
    sim_site = web.TCPSite(sim_runner, "127.0.0.1", 0, ssl_context=sim_context)
    await sim_site.start()
    config = parse_config(
        {
            "server": {"access_log": False},
            "policy_files": ["builtin:default"],
            "providers": {
                "openai": {
                    "type": "openai",
                    "base_url": f"https://127.0.0.1:{sim_site.port}/v1",
                    "api_key_env": "BENCH_KEY",
                }
            },
            "models": {"gpt-4o-mini": [{"provider": "openai", "model": "gpt-4o-mini"}]},
            "keys": [{"name": "bench", "sha256": hash_key(VIRTUAL_KEY)}],
            "intercept": {
                "enabled": True,
                "port": 0,
                "certificates": [{"cert_file": str(leaf_file), "key_file": str(key_file)}],
                "hosts": {
                    "api.openai.com": {
                        "dialect": "openai",
                        "addresses": [f"127.0.0.1:{sim_site.port}"],
                    }
                },
                "identity": {"salt_env": "BENCH_SALT"},
            },
        }
    )
    app = build_app(config, environ={"BENCH_KEY": "sk-sim", "BENCH_SALT": "salt"})
    gateway = await start_gateway(app, "127.0.0.1", 0)
    plain_port = int(gateway.url.rsplit(":", 1)[1])
    intercept_port = app[INTERCEPT_KEY].port
    assert intercept_port is not None
    client_tls = ssl.create_default_context(cafile=str(directory / "ca" / "ca.pem"))
    try:
        results = {
            "connect, plain listener (TCP)": _summary(
                await _connects(plain_port, None, connections)
            ),
            "connect, interception listener (TCP + TLS)": _summary(
                await _connects(intercept_port, client_tls, connections)
            ),
        }
        async with aiohttp.ClientSession() as plain:
            results["request, plain listener, keep-alive"] = _summary(
                await _requests(
                    plain,
                    f"{gateway.url}/v1/chat/completions",
                    {"Authorization": f"Bearer {VIRTUAL_KEY}"},
                    requests,
                )
            )
        connector = aiohttp.TCPConnector(resolver=_ToListener(intercept_port), ssl=client_tls)
        async with aiohttp.ClientSession(connector=connector) as intercepted:
            results["request, interception listener, keep-alive"] = _summary(
                await _requests(
                    intercepted,
                    "https://api.openai.com/v1/chat/completions",
                    {"Authorization": f"Bearer {CALLER_KEY}"},
                    requests,
                )
            )
    finally:
        await gateway.stop()
        await sim_runner.cleanup()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--pki", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pki is None:
        # aiohttp reads the trust store once, at import, and the plain listener's
        # upstream session must trust the test CA: so make the CA, then run again in a
        # process whose SSL_CERT_FILE names it.
        directory = Path(tempfile.mkdtemp(prefix="smartflow-bench-intercept-"))
        ca = create_ca(directory / "ca")
        issue_leaf(ca, ["api.openai.com", "127.0.0.1"], directory)
        env = {**os.environ, "SSL_CERT_FILE": str(directory / "ca" / "ca.pem")}
        command = [sys.executable, __file__, "--pki", str(directory)]
        command += ["--connections", str(args.connections), "--requests", str(args.requests)]
        sys.exit(subprocess.run(command, env=env, check=False).returncode)
    logging.basicConfig(level=logging.WARNING)
    results = asyncio.run(run(Path(args.pki), args.connections, args.requests))
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}")
    print(f"{'case':<48} {'mean ms':>8} {'p50 ms':>8} {'p90 ms':>8}")
    for name, values in results.items():
        print(f"{name:<48} {values['mean']:>8.3f} {values['p50']:>8.3f} {values['p90']:>8.3f}")


if __name__ == "__main__":
    main()
