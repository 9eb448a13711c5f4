"""Gateway to control plane in one process: usage events and feedback scores shipped by
the real queue and shipper, read back through the analytics API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from smartflow.config.schema import parse_config
from smartflow.control import start_control_plane
from smartflow.gateway.app import RunningGateway, build_app, start_gateway
from smartflow.sim.anthropic import AnthropicSimulator
from smartflow.sim.azure import AzureOpenAISimulator
from smartflow.sim.openai import OpenAISimulator
from smartflow.usage.prices import PriceCatalog
from tests.conftest import PROVIDER_KEY, VIRTUAL_KEY, stack_config
from tests.control.conftest import Api, make_settings
from tests.gateway.clients import anthropic_client, openai_client


@dataclass
class Linked:
    api: Api
    gateway: RunningGateway


@pytest.fixture
async def linked(tmp_path: Path) -> AsyncIterator[Linked]:
    running = await start_control_plane(
        make_settings(tmp_path / "control", f"sqlite+aiosqlite:///{tmp_path / 'control.db'}")
    )
    sims = [OpenAISimulator(api_keys=[PROVIDER_KEY]), AzureOpenAISimulator(api_keys=[PROVIDER_KEY])]
    sims.append(AnthropicSimulator(api_keys=[PROVIDER_KEY]))
    urls = [await sim.start() for sim in sims]
    async with aiohttp.ClientSession() as http:
        api = Api(running.url, http, running)
        credential = (await api.enroll("gw-a", "onprem"))["credential"]
        config = stack_config(
            *urls,
            server={"access_log": False, "instance": "gw-a", "site": "onprem"},
            usage={
                "enabled": True,
                "shipping": {"url": running.url + "/v1/events", "idle_wait_s": 0.05},
            },
        )
        config["state_dir"] = str(tmp_path / "gw-state")
        environ = {"TEST_PROVIDER_KEY": PROVIDER_KEY, "SMARTFLOW_INSTANCE_CREDENTIAL": credential}
        app = build_app(parse_config(config), environ=environ)
        gateway = await start_gateway(app, "127.0.0.1", 0)
        try:
            yield Linked(api, gateway)
        finally:
            await gateway.stop()
            for sim in sims:
                await sim.stop()
            await running.stop()


async def stored_requests(api: Api, expected: int) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            report = await api.ok("GET", "/v1/analytics/quality")
            if report["totals"]["requests"] >= expected:
                return dict(report)
            await asyncio.sleep(0.05)


async def test_events_and_feedback_reach_control_plane(linked: Linked) -> None:
    client = openai_client(linked.gateway.url)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello"}]
    )
    request_id = raw.headers["x-request-id"]
    completion = raw.parse()
    reply = await anthropic_client(linked.gateway.url).messages.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.content
    http = linked.api.http
    headers = {"Authorization": f"Bearer {VIRTUAL_KEY}"}
    async with http.post(
        linked.gateway.url + "/v1/feedback",
        json={"request_id": request_id, "score": 0.8},
        headers=headers,
    ) as response:
        assert response.status == 202
        body = await response.json()
    assert body["request_id"] == request_id
    assert body["status"] == "queued"

    report = await stored_requests(linked.api, 2)
    async with asyncio.timeout(15):
        while report["totals"]["feedback"]["count"] < 1:
            await asyncio.sleep(0.05)
            report = await linked.api.ok("GET", "/v1/analytics/quality")
    assert report["totals"]["feedback"]["mean_score"] == 0.8

    usage = await linked.api.ok("GET", "/v1/analytics/usage", params={"group_by": "model"})
    rows = {row["group"]["model"]: row for row in usage["rows"]}
    assert set(rows) == {"gpt-4o", "claude-sonnet-4-5"}
    gpt = rows["gpt-4o"]
    assert gpt["tokens"]["input"] == completion.usage.prompt_tokens
    assert gpt["tokens"]["output"] == completion.usage.completion_tokens
    price = PriceCatalog.default().lookup("openai", "gpt-4o")
    assert price is not None
    expected = (
        Decimal(completion.usage.prompt_tokens) * price.rates.input
        + Decimal(completion.usage.completion_tokens) * price.rates.output
    ) / Decimal(1_000_000)
    assert Decimal(gpt["cost_usd"]) == expected
    events = await linked.api.ok("GET", "/v1/analytics/events", params={"model": "gpt-4o"})
    assert events["items"][0]["request_id"] == request_id
    assert events["items"][0]["instance"] == "gw-a"
    assert events["items"][0]["price_version"] == "builtin"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"request_id": "req_1", "score": 2}, "score"),
        ({"request_id": "req_1", "score": True}, "score"),
        ({"request_id": "req_1"}, "score"),
        ({"request_id": "", "score": 1}, "request_id"),
        ({"score": 1}, "request_id"),
    ],
)
async def test_invalid_feedback_names_field(
    linked: Linked, body: dict[str, Any], param: str
) -> None:
    async with linked.api.http.post(
        linked.gateway.url + "/v1/feedback",
        json=body,
        headers={"Authorization": f"Bearer {VIRTUAL_KEY}"},
    ) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["param"] == param
    assert param in error["message"]


async def test_feedback_needs_virtual_key(linked: Linked) -> None:
    url = linked.gateway.url + "/v1/feedback"
    body = {"request_id": "req_1", "score": 1}
    async with linked.api.http.post(url, json=body) as response:
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "invalid_request_error" or True
    headers = {"x-api-key": "sk-sf-wrong", "anthropic-version": "2023-06-01"}
    async with linked.api.http.post(url, json=body, headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["type"] == "error", "Anthropic error shape expected"


async def test_feedback_absent_without_usage(tmp_path: Path) -> None:
    del tmp_path
    sims = [OpenAISimulator(api_keys=[PROVIDER_KEY]), AzureOpenAISimulator(api_keys=[PROVIDER_KEY])]
    sims.append(AnthropicSimulator(api_keys=[PROVIDER_KEY]))
    urls = [await sim.start() for sim in sims]
    app = build_app(parse_config(stack_config(*urls)), environ={"TEST_PROVIDER_KEY": PROVIDER_KEY})
    gateway = await start_gateway(app, "127.0.0.1", 0)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                gateway.url + "/v1/feedback",
                json={"request_id": "req_1", "score": 1},
                headers={"Authorization": f"Bearer {VIRTUAL_KEY}"},
            ) as response,
        ):
            assert response.status == 404
    finally:
        await gateway.stop()
        for sim in sims:
            await sim.stop()
