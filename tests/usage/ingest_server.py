"""A small ingest server on 127.0.0.1 for the shipper tests; it stores events by id."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

TOKEN = "instance-test-token"


class IngestServer:
    """Stores each event once by ``event_id`` and counts every receipt.

    ``store_then_fail`` makes that many requests store their events and still respond 503,
    as when a response is lost. ``reject`` rejects, with 422, any batch that contains an
    event it matches. ``responses`` queues (status, headers) responses sent without storing,
    and ``hold`` keeps every request waiting until the server stops.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/v1/events"
        self.stored: dict[str, dict[str, Any]] = {}
        self.receipts: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.store_then_fail = 0
        self.reject: Callable[[dict[str, Any]], bool] = lambda event: False
        self.responses: list[tuple[int, dict[str, str]]] = []
        self.hold = False
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/events", self._ingest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _ingest(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        if self.hold:
            await self._release.wait()
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "invalid instance credential"}, status=401)
        payload = orjson.loads(await request.read())
        self.requests.append(payload)
        if self.responses:
            status, headers = self.responses.pop(0)
            return web.json_response({"error": "scripted"}, status=status, headers=headers)
        events = payload["events"]
        if any(self.reject(event) for event in events):
            return web.json_response({"error": "invalid event"}, status=422)
        duplicates = 0
        for event in events:
            self.receipts[event["event_id"]] += 1
            if event["event_id"] in self.stored:
                duplicates += 1
            self.stored.setdefault(event["event_id"], event)
        if self.store_then_fail > 0:
            self.store_then_fail -= 1
            return web.json_response({"error": "lost response"}, status=503)
        return web.json_response({"accepted": len(events) - duplicates, "duplicates": duplicates})
