"""Zero loss with real processes, across a control plane outage and a SIGKILL.

Two gateway instances queue the events of 1,000 requests while the control plane is down,
and ship them after it restarts. One instance is killed with SIGKILL while a batch it sent
is stored but not yet acknowledged, and then restarted.

The control plane must end with exactly one event per request, with the tokens the
caller saw and the cost the price catalogue gives for them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from smartflow.core.types import Usage
from smartflow.sim.anthropic import AnthropicSimulator
from smartflow.sim.azure import AzureOpenAISimulator
from smartflow.sim.openai import OpenAISimulator
from smartflow.usage.prices import PriceCatalog
from tests.conftest import PROVIDER_KEY, VIRTUAL_KEY, free_port, stack_config
from tests.control.conftest import ADMIN_TOKEN

SMARTFLOW = [sys.executable, "-m", "smartflow.cli"]
REQUESTS = 1000
BATCH_EVENTS = 20
HELD_BATCH = 3
"""The proxy in front of instance A never relays the response to this batch, and A is
killed while it waits for it."""
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5")


def _environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SMARTFLOW_")}
    env["SMARTFLOW_LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


class Process:
    """One smartflow command run as a child process, with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, port: int) -> None:
        self.args = args
        self.env = env
        self.log = log
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.args, env=self.env, stdout=log, stderr=log
            )
        async with asyncio.timeout(30):
            while True:
                if self.process.returncode is not None:
                    pytest.fail(f"{self.args[3]} exited early:\n{self.log.read_text()}")
                try:
                    async with http.get(self.url + "/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(sig)
        async with asyncio.timeout(20):
            await process.wait()


@dataclass
class HoldingProxy:
    """Forwards instance A's batches to the control plane, counting what it stored.

    The response to batch ``HELD_BATCH`` that the control plane stored is never sent on,
    so A dies with that batch stored but not acknowledged.
    """

    target: str
    port: int = field(default_factory=free_port)
    forwarded: int = 0
    duplicates: int = 0
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/events", self._forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in ("authorization", "content-type", "x-smartflow-instance")
        }
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(self.target + "/v1/events", data=body, headers=headers) as reply,
            ):
                text = await reply.read()
                status = reply.status
        except aiohttp.ClientConnectionError:
            return web.Response(status=502, text="control plane unreachable")
        if status == 200:
            self.forwarded += 1
            self.duplicates += orjson.loads(text)["duplicates"]
            if self.forwarded == HELD_BATCH and not self.holding.is_set():
                self.holding.set()
                await self.release.wait()
        return web.Response(status=status, body=text, content_type="application/json")


async def _metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    async with http.get(url + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exported by {url}")


async def _until(check: Any, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")


async def _admin(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.request(method, url, headers=headers, **kwargs) as response:
        assert response.status in (200, 201), await response.text()
        return await response.json()


async def _enroll(http: aiohttp.ClientSession, control: str, name: str) -> str:
    token = await _admin(http, "POST", control + "/v1/enrollment-tokens", json={"site": "s1"})
    body = {"token": token["token"], "name": name, "site": "s1"}
    async with http.post(control + "/v1/enroll", json=body) as response:
        assert response.status == 201
        return str((await response.json())["credential"])


async def _stored_total(http: aiohttp.ClientSession, control: str) -> int:
    report = await _admin(http, "GET", control + "/v1/analytics/usage")
    return int(report["totals"]["requests"])


@pytest.fixture
async def simulators() -> AsyncIterator[list[str]]:
    sims = [
        OpenAISimulator(api_keys=[PROVIDER_KEY]),
        AzureOpenAISimulator(api_keys=[PROVIDER_KEY]),
        AnthropicSimulator(api_keys=[PROVIDER_KEY]),
    ]
    urls = [await sim.start() for sim in sims]
    try:
        yield urls
    finally:
        for sim in sims:
            await sim.stop()


def _gateway(
    tmp_path: Path, name: str, sim_urls: list[str], ingest_url: str, credential: str
) -> Process:
    port = free_port()
    config = stack_config(
        *sim_urls,
        server={"access_log": False, "instance": name, "site": "s1", "host": "127.0.0.1"},
        usage={
            "enabled": True,
            "shipping": {
                "url": ingest_url,
                "batch_events": BATCH_EVENTS,
                "idle_wait_s": 0.05,
                "backoff_max_s": 0.3,
            },
        },
    )
    config["state_dir"] = str(tmp_path / name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = _environment(TEST_PROVIDER_KEY=PROVIDER_KEY, SMARTFLOW_INSTANCE_CREDENTIAL=credential)
    args = [*SMARTFLOW, "gateway", "--config", str(path), "--port", str(port)]
    return Process(args, env, tmp_path / f"{name}.log", port)


async def _send(
    http: aiohttp.ClientSession, gateway: str, index: int, seen: dict[str, dict[str, int]]
) -> None:
    body = {
        "model": MODELS[index % len(MODELS)],
        "messages": [{"role": "user", "content": f"request number {index} " + "x" * index}],
        "max_tokens": 20 + index % 7,
    }
    headers = {"Authorization": f"Bearer {VIRTUAL_KEY}"}
    async with http.post(gateway + "/v1/chat/completions", json=body, headers=headers) as reply:
        assert reply.status == 200, await reply.text()
        usage = (await reply.json())["usage"]
        seen[reply.headers["x-request-id"]] = usage


async def test_no_event_lost_or_doubled(tmp_path: Path, simulators: list[str]) -> None:
    control_port = free_port()
    control = Process(
        [
            *SMARTFLOW,
            "control-plane",
            "--port",
            str(control_port),
            "--state-dir",
            str(tmp_path / "control"),
        ],
        _environment(SMARTFLOW_CONTROL_ADMIN_TOKEN=ADMIN_TOKEN),
        tmp_path / "control.log",
        control_port,
    )
    proxy = HoldingProxy(control.url)
    processes: list[Process] = [control]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=30)
    ) as http:
        try:
            await control.start(http)
            credentials = {name: await _enroll(http, control.url, name) for name in ("a", "b")}
            await control.stop()
            await proxy.start()
            gateway_a = _gateway(
                tmp_path,
                "a",
                simulators,
                f"http://127.0.0.1:{proxy.port}/v1/events",
                credentials["a"],
            )
            gateway_b = _gateway(
                tmp_path, "b", simulators, control.url + "/v1/events", credentials["b"]
            )
            processes += [gateway_a, gateway_b]
            await asyncio.gather(gateway_a.start(http), gateway_b.start(http))

            # 1,000 requests while the control plane is down, half through each instance.
            seen: dict[str, dict[str, int]] = {}
            limit = asyncio.Semaphore(32)

            async def send(index: int) -> None:
                async with limit:
                    target = (gateway_a, gateway_b)[index % 2].url
                    await _send(http, target, index, seen)

            await asyncio.gather(*(send(index) for index in range(REQUESTS)))
            assert len(seen) == REQUESTS

            async def all_queued() -> bool:
                depths = [
                    await _metric(http, g.url, "smartflow_usage_queue_depth")
                    for g in (gateway_a, gateway_b)
                ]
                return depths == [REQUESTS / 2, REQUESTS / 2]

            await _until(all_queued, 20, "both queues to hold 500 events on disk")

            # The control plane comes back; A dies with a batch stored but unacknowledged.
            await control.start(http)
            await _until(lambda: _holding(proxy), 20, "instance a to ship its third batch")
            await gateway_a.stop(signal.SIGKILL)
            stored_from_a = await _admin(
                http, "GET", control.url + "/v1/analytics/usage", params={"instance": "a"}
            )
            assert stored_from_a["totals"]["requests"] == HELD_BATCH * BATCH_EVENTS
            await gateway_a.start(http)

            async def all_stored() -> bool:
                return await _stored_total(http, control.url) >= REQUESTS

            await _until(all_stored, 30, "the control plane to store 1,000 events")

            async def all_acknowledged() -> bool:
                depths = [
                    await _metric(http, g.url, "smartflow_usage_queue_depth")
                    for g in (gateway_a, gateway_b)
                ]
                return depths == [0, 0]

            await _until(all_acknowledged, 20, "both queues to be empty")
            assert await _stored_total(http, control.url) == REQUESTS
            assert proxy.duplicates >= BATCH_EVENTS, "the held batch was not sent again"

            events = await _all_events(http, control.url)
        finally:
            for process in reversed(processes):
                await process.stop(signal.SIGTERM)
            await proxy.stop()

    assert len(events) == REQUESTS
    assert len({event["event_id"] for event in events}) == REQUESTS
    assert {event["request_id"] for event in events} == set(seen)
    _check_costs(events, seen)


async def _holding(proxy: HoldingProxy) -> bool:
    return proxy.holding.is_set()


async def _all_events(http: aiohttp.ClientSession, control: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        page = await _admin(http, "GET", control + "/v1/analytics/events", params=params)
        events += page["items"]
        if page["next_before"] is None:
            return events
        params["before"] = page["next_before"]


def _check_costs(events: list[dict[str, Any]], seen: dict[str, dict[str, int]]) -> None:
    prices = PriceCatalog.default()
    total = Decimal(0)
    for event in events:
        reported = seen[event["request_id"]]
        tokens = event["tokens"]
        assert tokens["input"] == reported["prompt_tokens"], event
        assert tokens["output"] == reported["completion_tokens"], event
        usage = Usage(
            input_tokens=tokens["input"],
            output_tokens=tokens["output"],
            cached_input_tokens=tokens["cached_input"],
            cache_write_tokens=tokens["cache_write"],
            reasoning_tokens=tokens["reasoning"],
        )
        cost = prices.cost(
            event["provider_kind"],
            (event["model_served"], event["deployment"].split("/")[-1]),
            usage,
        )
        assert cost.usd is not None, f"no catalogue price for {event['model_served']}"
        assert event["cost_usd"] is not None
        assert Decimal(event["cost_usd"]) == cost.usd, event
        total += cost.usd
    assert total > 0
