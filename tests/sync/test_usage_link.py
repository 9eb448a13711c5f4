"""Usage events of a linked instance: shipped over the link, priced by the central catalogue."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import VIRTUAL_KEY
from tests.control.conftest import Api, wait_for
from tests.sync.conftest import (
    StartLinked,
    add_virtual_key,
    chat,
    configure_site,
    enrollment_token,
)

# gpt-4o at one dollar per million input tokens and two per million output tokens.
CENTRAL_PRICES = {
    "openai": {"models": {"gpt-4o": {"input": 1.0, "output": 2.0, "as_of": "2026-12-01"}}}
}


async def _events(api: Api) -> list[dict[str, Any]]:
    page = await api.ok("GET", "/v1/analytics/events?limit=100")
    return list(page["items"])


async def test_linked_instance_ships_priced_events(
    api: Api, simulator: str, start_linked: StartLinked
) -> None:
    await configure_site(api, "on-prem", simulator, model="gpt-4o")
    await add_virtual_key(api)
    await api.ok("PUT", "/v1/price-catalog", json={"providers": CENTRAL_PRICES})
    head = (await api.ok("GET", "/healthz"))["version"]
    token = await enrollment_token(api, "on-prem")
    # A linked instance ships to its control plane and ignores usage.shipping.url; the
    # section only shortens the wait between batches here.
    shipping = {"url": "http://127.0.0.1:9/v1/events", "idle_wait_s": 0.05}
    usage = {"enabled": True, "shipping": shipping}
    linked = await start_linked(api.url, "onprem-1", "on-prem", token, usage=usage)
    await linked.agent.wait_for_version(head, timeout=5)

    headers = {"Authorization": f"Bearer {VIRTUAL_KEY}"}
    async with aiohttp.ClientSession() as http:
        for text in ("first", "second", "third"):
            status, body = await chat(http, linked.url, text)
            assert status == 200, body
        async with http.post(
            linked.url + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "fourth"}]},
            headers=headers,
        ) as reply:
            assert reply.status == 200
            request_id = reply.headers["x-request-id"]
        feedback = {"request_id": request_id, "score": 0.5}
        async with http.post(linked.url + "/v1/feedback", json=feedback, headers=headers) as reply:
            assert reply.status == 202, await reply.text()

    async def four_events() -> bool:
        return len(await _events(api)) == 4

    await wait_for(four_events)

    async def feedback_counted() -> bool:
        quality = await api.ok("GET", "/v1/analytics/quality")
        return bool(quality["totals"]["feedback"]["count"] == 1)

    await wait_for(feedback_counted)
    for event in await _events(api):
        assert event["instance"] == "onprem-1"
        assert event["site"] == "on-prem"
        assert event["price_version"] == "central-1"
        tokens = event["tokens"]
        expected = (tokens["input"] * 1.0 + tokens["output"] * 2.0) / 1_000_000
        assert abs(float(event["cost_usd"]) - expected) < 1e-9
