"""Propagation time of a policy change, from ``policy apply`` to enforcement at instances.

The script starts, as child processes on 127.0.0.1: the control plane (``smartflow
control-plane``, SQLite in a temporary directory or PostgreSQL with ``--postgres``) and
two real linked instances (``smartflow gateway --control-plane``, sites on-prem and
cloud), whose provider is an OpenAI simulator in this process. In this process it also
runs ``--simulated`` lightweight instances: each enrolls, keeps one sync WebSocket open,
verifies the Ed25519 signature of every snapshot, validates it and acknowledges it.

Each of ``--changes`` changes applies a new version of one policy, with a content rule
that blocks a word used for the first time, through ``PUT /v1/policies/{name}`` (the call
``smartflow policy apply`` makes). The clock starts just before that request. A change
counts as enforced at an instance when a chat request with the new word gets the
policy's 400 there; both real instances are probed in parallel, every 2 ms. The script
also records when the last simulated instance acknowledged the version.

It prints p50, p99 and max of each figure, and the control plane's resident memory and
CPU time with all connections open: idle, and over the change loop.

Run: .venv/bin/python bench/sync_propagation.py [--changes N] [--simulated N]
     [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from smartflow.auth.keys import hash_key
from smartflow.sim.openai import OpenAISimulator
from smartflow.sync.protocol import SnapshotMessage, parse_server_message
from smartflow.sync.signing import VerifyKey, verify_snapshot

ADMIN_TOKEN = "sf-admin-bench-" + "s" * 32
VIRTUAL_KEY = "sk-sf-bench-sync-" + "k" * 24
POLICY = "bench-probe"
MODEL = "bench-model"
SMARTFLOW = [sys.executable, "-m", "smartflow.cli"]
PROBE_INTERVAL_S = 0.002


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _word(change: int) -> str:
    return f"probe{change:04d}word"


def _policy(change: int) -> dict[str, Any]:
    return {
        "apiVersion": "smartflow/v1",
        "kind": "Policy",
        "metadata": {"name": POLICY},
        "spec": {"content": {"deny": [{"name": f"deny-{change}", "words": [_word(change)]}]}},
    }


def _percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


# --- the control plane's resource use, from /proc ------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    return (int(fields[11]) + int(fields[12])) / ticks


def _memory_mib(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values


# --- the control plane and the real instances ----------------------------------------------


async def _start(command: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )


async def _wait_healthy(
    http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process, ready: str = "ok"
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"the process for {url} exited with {process.returncode}")
        try:
            async with http.get(url + "/healthz") as reply:
                if reply.status == 200 and (await reply.json()).get("status") == ready:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} was not healthy within 60 s")


class Admin:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(
            method, self.url + path, json=body, headers=self.headers
        ) as reply:
            data = await reply.json()
            if reply.status >= 300:
                raise RuntimeError(f"{method} {path} returned {reply.status}: {data}")
            return data

    async def enrollment_token(self, site: str) -> str:
        created = await self.call("POST", "/v1/enrollment-tokens", {"site": site})
        return str(created["token"])

    async def head(self) -> int:
        async with self.http.get(self.url + "/healthz") as reply:
            return int((await reply.json())["version"])


async def _seed(admin: Admin, simulator_url: str) -> None:
    for site in ("on-prem", "cloud"):
        provider = {
            "site": site,
            "settings": {"type": "openai", "base_url": simulator_url + "/v1"},
            "credentials": {"api_key": "sim-key"},
        }
        await admin.call("PUT", f"/v1/providers/sim-{site}", provider)
        deployment = {"provider": f"sim-{site}", "model": "gpt-4o-mini"}
        await admin.call("PUT", f"/v1/deployments/dep-{site}", deployment)
    aliases = {"deployments": ["dep-on-prem", "dep-cloud"]}
    await admin.call("PUT", f"/v1/model-aliases/{MODEL}", aliases)
    await admin.call("PUT", "/v1/keys/bench", {"sha256": hash_key(VIRTUAL_KEY)})
    await admin.call("PUT", f"/v1/policies/{POLICY}", _policy(0))


# --- simulated instances ----------------------------------------------------------------


@dataclass
class Simulated:
    """Lightweight instances: enroll, verify and validate every snapshot, acknowledge it."""

    http: aiohttp.ClientSession
    url: str
    acked: dict[int, list[float]] = field(default_factory=dict)
    """Snapshot version to the times (perf_counter) at which instances acknowledged it."""
    errors: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    connected: int = 0

    async def start(self, admin: Admin, count: int) -> None:
        for index in range(count):
            token = await admin.enrollment_token("edge")
            body = {"token": token, "name": f"edge-{index:03d}", "site": "edge"}
            async with self.http.post(self.url + "/v1/enroll", json=body) as reply:
                enrolled = await reply.json()
                if reply.status != 201:
                    raise RuntimeError(f"enrollment failed: {enrolled}")
            self.tasks.append(asyncio.create_task(self._run(enrolled)))

    async def _run(self, enrolled: dict[str, Any]) -> None:
        key = VerifyKey.from_base64(enrolled["signing_key"]["public_key"])
        trusted = {key.key_id: key}
        headers = {"Authorization": f"Bearer {enrolled['credential']}"}
        async with self.http.ws_connect(
            self.url + enrolled["sync_path"], headers=headers, heartbeat=20
        ) as stream:
            self.connected += 1
            async for message in stream:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                parsed = parse_server_message(message.data)
                if not isinstance(parsed, SnapshotMessage):
                    self.errors.append(str(parsed))
                    continue
                snapshot = verify_snapshot(parsed, trusted)
                await stream.send_json({"version": snapshot.version})
                self.acked.setdefault(snapshot.version, []).append(time.perf_counter())

    async def wait_all(self, version: int, count: int, timeout: float = 30) -> float:
        """Return the time the last of ``count`` instances acknowledged ``version``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            times = self.acked.get(version, [])
            if len(times) >= count:
                return max(times, default=time.perf_counter())
            await asyncio.sleep(0.001)
        raise TimeoutError(f"only {len(self.acked.get(version, []))} of {count} acked {version}")

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# --- one change -----------------------------------------------------------------------------


async def _enforced_at(http: aiohttp.ClientSession, url: str, change: int) -> float:
    """Probe ``url`` until the word of ``change`` is blocked; return that time."""
    body = {
        "model": MODEL,
        "max_tokens": 5,
        "messages": [{"role": "user", "content": f"say {_word(change)}"}],
    }
    headers = {"Authorization": f"Bearer {VIRTUAL_KEY}"}
    rule = f"{POLICY}/deny-{change}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as reply:
            text = await reply.text()
            if reply.status == 400 and rule in text:
                return time.perf_counter()
            if reply.status != 200:
                raise RuntimeError(f"{url} returned {reply.status}: {text[:300]}")
        await asyncio.sleep(PROBE_INTERVAL_S)
    raise TimeoutError(f"change {change} not enforced at {url} within 30 s")


@dataclass
class Samples:
    on_prem: list[float] = field(default_factory=list)
    cloud: list[float] = field(default_factory=list)
    both: list[float] = field(default_factory=list)
    simulated: list[float] = field(default_factory=list)


async def _change(
    http: aiohttp.ClientSession,
    admin: Admin,
    simulated: Simulated,
    instances: dict[str, str],
    change: int,
    samples: Samples,
) -> None:
    expected = await admin.head() + 1
    start = time.perf_counter()
    probes = [asyncio.create_task(_enforced_at(http, url, change)) for url in instances.values()]
    await admin.call("PUT", f"/v1/policies/{POLICY}", _policy(change))
    on_prem, cloud = await asyncio.gather(*probes)
    last_ack = await simulated.wait_all(expected, len(simulated.tasks))
    samples.on_prem.append((on_prem - start) * 1000)
    samples.cloud.append((cloud - start) * 1000)
    samples.both.append((max(on_prem, cloud) - start) * 1000)
    samples.simulated.append((last_ack - start) * 1000)


# --- the run --------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="sf-sync-bench-") as directory:
        await _run(args, Path(directory))


async def _run(args: argparse.Namespace, directory: Path) -> None:
    env = {
        **os.environ,
        "SMARTFLOW_CONTROL_ADMIN_TOKEN": ADMIN_TOKEN,
        "SMARTFLOW_LOG_LEVEL": "WARNING",
    }
    control_port = _free_port()
    control_url = f"http://127.0.0.1:{control_port}"
    command = [*SMARTFLOW, "control-plane", "--port", str(control_port)]
    command += ["--state-dir", str(directory / "control")]
    if args.postgres:
        command += ["--database-url", args.postgres]
    simulator = OpenAISimulator()
    simulator_url = await simulator.start()
    processes: list[asyncio.subprocess.Process] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            control = await _start(command, env)
            processes.append(control)
            await _wait_healthy(http, control_url, control)
            admin = Admin(http, control_url)
            await _seed(admin, simulator_url)
            instances = {}
            for site in ("on-prem", "cloud"):
                port = _free_port()
                token = await admin.enrollment_token(site)
                gateway = [*SMARTFLOW, "gateway", "--control-plane", control_url]
                gateway += ["--name", site, "--site", site, "--port", str(port)]
                gateway += ["--state-dir", str(directory / site), "--enroll-token", token]
                processes.append(await _start(gateway, env))
                instances[site] = f"http://127.0.0.1:{port}"
            for process, url in zip(processes[1:], instances.values(), strict=True):
                await _wait_healthy(http, url, process)
            simulated = Simulated(http, control_url)
            await simulated.start(admin, args.simulated)
            await simulated.wait_all(await admin.head(), args.simulated)
            await _report(args, http, admin, simulated, instances, control.pid)
            await simulated.stop()
        finally:
            for process in processes:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    await process.wait()
            await simulator.stop()


async def _report(
    args: argparse.Namespace,
    http: aiohttp.ClientSession,
    admin: Admin,
    simulated: Simulated,
    instances: dict[str, str],
    pid: int,
) -> None:
    connections = len(instances) + simulated.connected
    await asyncio.sleep(1)
    memory_idle = _memory_mib(pid)
    cpu_before, wall_before = _cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(args.idle_s)
    idle_cpu = (_cpu_seconds(pid) - cpu_before) / (time.perf_counter() - wall_before)

    samples = Samples()
    cpu_before, wall_before = _cpu_seconds(pid), time.perf_counter()
    for change in range(1, args.changes + 1):
        await _change(http, admin, simulated, instances, change, samples)
        await asyncio.sleep(args.gap_s)
    loop_wall = time.perf_counter() - wall_before
    loop_cpu = _cpu_seconds(pid) - cpu_before
    memory_after = _memory_mib(pid)

    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"store: {'PostgreSQL' if args.postgres else 'SQLite'}; sync connections: {connections}")
    print(f"changes: {args.changes}, gap between changes {args.gap_s * 1000:.0f} ms")
    print()
    print(f"{'propagation (ms)':<44} {'p50':>8} {'p99':>8} {'max':>8}")
    rows = [
        ("enforced at on-prem (real instance)", samples.on_prem),
        ("enforced at cloud (real instance)", samples.cloud),
        ("enforced at both real instances", samples.both),
    ]
    if simulated.connected:
        label = f"acknowledged by all {simulated.connected} simulated instances"
        rows.append((label, samples.simulated))
    for label, values in rows:
        print(
            f"{label:<44} {_percentile(values, 0.5):8.1f} {_percentile(values, 0.99):8.1f} "
            f"{max(values):8.1f}"
        )
    print()
    print("control plane process:")
    print(f"  RSS with {connections} connections, idle: {memory_idle['VmRSS']:.1f} MiB")
    after, peak = memory_after["VmRSS"], memory_after["VmHWM"]
    print(f"  RSS after the changes: {after:.1f} MiB (peak {peak:.1f} MiB)")
    print(f"  CPU idle with {connections} connections: {idle_cpu * 100:.2f} % of one core")
    print(
        f"  CPU over the changes: {loop_cpu:.2f} s in {loop_wall:.1f} s "
        f"({loop_cpu / loop_wall * 100:.1f} % of one core, {loop_cpu / args.changes * 1000:.1f} ms "
        "per change)"
    )
    if simulated.errors:
        count = len(simulated.errors)
        print(f"simulated instances got {count} error messages: {simulated.errors[:3]}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100, help="policy changes (default 100)")
    parser.add_argument(
        "--simulated", type=int, default=50, help="simulated instances (default 50)"
    )
    parser.add_argument(
        "--gap-s", type=float, default=0.1, help="pause between changes, in seconds (default 0.1)"
    )
    parser.add_argument(
        "--idle-s", type=float, default=5.0, help="idle CPU measuring time, in seconds (default 5)"
    )
    parser.add_argument(
        "--postgres", metavar="URL", help="control plane store URL, such as postgresql://..."
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_arguments()))
