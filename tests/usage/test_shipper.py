"""The shipper against a real ingest server on 127.0.0.1: outages, retries, dedup."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from smartflow.providers.base import Secret
from smartflow.usage.events import UsageEvent, new_event_id, utc_timestamp
from smartflow.usage.queue import QueueSettings, UsageQueue
from smartflow.usage.shipper import INSTANCE_HEADER, ShipperSettings, UsageShipper
from tests.conftest import free_port
from tests.usage.ingest_server import TOKEN, IngestServer


def _event(index: int) -> UsageEvent:
    return UsageEvent(
        event_id=new_event_id(),
        request_id=f"r{index}",
        started_at=utc_timestamp(0),
        instance="gw-7",
        site="eu",
        dialect="openai",
    )


def _settings(url: str, **overrides: object) -> ShipperSettings:
    values: dict[str, object] = {
        "url": url,
        "credential": Secret(TOKEN),
        "instance": "gw-7",
        "site": "eu",
        "batch_events": 100,
        "idle_wait_s": 0.05,
        "timeout_s": 5.0,
        "backoff_initial_s": 0.02,
        "backoff_max_s": 0.2,
    }
    values.update(overrides)
    return ShipperSettings(**values)  # type: ignore[arg-type]


async def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def _ship_until(
    queue: UsageQueue,
    settings: ShipperSettings,
    predicate: Callable[[], bool],
    timeout: float = 30.0,
) -> UsageShipper:
    """Run a shipper until ``predicate`` is true, stop it, and return it for its stats."""
    shipper = UsageShipper(queue, settings)
    shipper.start()
    try:
        await _until(predicate, timeout)
    finally:
        await shipper.stop()
    return shipper


async def _offer(queue: UsageQueue, indexes: range) -> None:
    for index in indexes:
        assert queue.offer(_event(index))
    await queue.flush()


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[UsageQueue]:
    opened = await UsageQueue.open(tmp_path / "queue")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def server() -> AsyncIterator[IngestServer]:
    running = IngestServer(free_port())
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_outage_then_exactly_once_stored(queue: UsageQueue, server: IngestServer) -> None:
    shipper = UsageShipper(queue, _settings(server.url))
    shipper.start()
    try:
        await _offer(queue, range(10))
        await _until(lambda: len(server.stored) == 10)

        await server.stop()
        await _offer(queue, range(10, 1010))
        await _until(lambda: shipper.stats.failures >= 3)
        assert queue.stats().depth == 1000

        await server.start()
        await _until(lambda: queue.stats().depth == 0)
    finally:
        await shipper.stop()

    request_ids = sorted(int(e["request_id"][1:]) for e in server.stored.values())
    assert request_ids == list(range(1010))
    assert len(server.stored) == 1010
    # The server was down, not losing responses, so each event crossed the wire once.
    assert set(server.receipts.values()) == {1}
    assert shipper.stats.shipped == 1010
    assert shipper.stats.consecutive_failures == 0
    assert shipper.stats.last_error is not None


async def test_lost_responses_are_resent_and_deduplicated(
    queue: UsageQueue, server: IngestServer
) -> None:
    server.store_then_fail = 3
    await _offer(queue, range(250))
    shipper = await _ship_until(queue, _settings(server.url), lambda: queue.stats().depth == 0)

    assert len(server.stored) == 250
    assert max(server.receipts.values()) > 1  # some events did arrive twice
    assert sum(server.receipts.values()) > 250
    assert shipper.stats.failures == 3
    assert shipper.stats.shipped == 250


async def test_rejected_event_is_isolated(queue: UsageQueue, server: IngestServer) -> None:
    server.reject = lambda event: event["request_id"] == "r13"
    await _offer(queue, range(40))
    shipper = await _ship_until(queue, _settings(server.url), lambda: queue.stats().depth == 0)

    stored = {e["request_id"] for e in server.stored.values()}
    assert stored == {f"r{i}" for i in range(40)} - {"r13"}
    assert shipper.stats.dead_lettered == 1
    assert queue.stats().dead_lettered == 1
    assert shipper.stats.failures == 0


async def test_retry_after_is_honoured(queue: UsageQueue, server: IngestServer) -> None:
    server.responses = [(429, {"Retry-After": "0.3"})]
    await _offer(queue, range(5))
    started = time.monotonic()
    await _ship_until(
        queue, _settings(server.url, backoff_max_s=5.0), lambda: queue.stats().depth == 0
    )
    assert time.monotonic() - started >= 0.3
    assert len(server.requests) == 2
    assert len(server.stored) == 5


async def test_rejected_credential_keeps_events(queue: UsageQueue, server: IngestServer) -> None:
    await _offer(queue, range(5))
    settings = _settings(server.url, credential=Secret("wrong-token"))
    shipper = UsageShipper(queue, settings)
    shipper.start()
    try:
        await _until(lambda: shipper.stats.failures >= 2)
    finally:
        await shipper.stop()
    assert queue.stats().depth == 5
    assert queue.stats().dead_lettered == 0
    assert shipper.stats.last_error is not None
    assert shipper.stats.last_error.startswith("HTTP 401")


async def test_payload_and_headers(queue: UsageQueue, server: IngestServer) -> None:
    await _offer(queue, range(3))
    shipper = UsageShipper(queue, _settings(server.url))
    assert await shipper.ship_once() == 3
    assert await shipper.ship_once() == 0
    await shipper.stop()

    payload = server.requests[0]
    assert payload["schema_version"] == 1
    assert payload["instance"] == "gw-7"
    assert payload["site"] == "eu"
    assert uuid.UUID(payload["batch_id"]).version == 7
    assert payload["sent_at"].endswith("Z")
    assert [e["request_id"] for e in payload["events"]] == ["r0", "r1", "r2"]
    assert UsageEvent.from_dict(payload["events"][0]).request_id == "r0"
    headers = server.headers[0]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers[INSTANCE_HEADER] == "gw-7"
    assert headers["Content-Type"] == "application/json"


async def test_stop_cancels_a_stuck_request(queue: UsageQueue, server: IngestServer) -> None:
    # The server accepts the request and does not respond until it stops.
    server.hold = True
    await _offer(queue, range(3))
    shipper = UsageShipper(queue, _settings(server.url))
    shipper.start()
    await _until(lambda: len(server.headers) == 1)
    started = time.monotonic()
    await shipper.stop(grace_s=0.1)
    assert time.monotonic() - started < 2.0
    assert queue.stats().depth == 3


async def test_batches_respect_byte_limit(queue: UsageQueue, server: IngestServer) -> None:
    size = len(_event(0).to_json())
    await _offer(queue, range(20))
    settings = _settings(server.url, max_batch_bytes=size * 6)
    await _ship_until(queue, settings, lambda: queue.stats().depth == 0)
    assert [len(r["events"]) for r in server.requests] == [5, 5, 5, 5]
    assert len(server.stored) == 20


async def test_partial_batch_waits_to_fill(queue: UsageQueue, server: IngestServer) -> None:
    shipper = UsageShipper(queue, _settings(server.url, batch_events=100, fill_wait_s=1.0))
    shipper.start()
    try:
        await _offer(queue, range(3))
        await _until(lambda: len(server.stored) == 3)
        sent_first = time.monotonic()
        # Written in steps within the wait, as a gateway writes under steady load.
        for start in range(3, 253, 50):
            await _offer(queue, range(start, start + 50))
        await _until(lambda: len(server.stored) == 253)
        waited = time.monotonic() - sent_first
    finally:
        await shipper.stop()
    sizes = [len(request["events"]) for request in server.requests]
    # After the partial first batch, the rest went out in full batches and one remainder.
    assert sizes == [3, 100, 100, 50], sizes
    assert waited >= 0.9


async def test_full_batches_do_not_wait(queue: UsageQueue, server: IngestServer) -> None:
    await _offer(queue, range(1000))
    settings = _settings(server.url, batch_events=100, fill_wait_s=30)
    await _ship_until(queue, settings, lambda: len(server.stored) == 1000, timeout=10)
    assert [len(request["events"]) for request in server.requests] == [100] * 10


async def test_shipper_reads_files_after_restart(tmp_path: Path, server: IngestServer) -> None:
    # After a restart the events are only on disk: the shipper reads them from the files,
    # with the same byte limit and the same isolation of a rejected event.
    size = len(_event(0).to_json())
    first = await UsageQueue.open(tmp_path / "queue")
    await _offer(first, range(20))
    await first.close()
    server.reject = lambda event: event["request_id"] == "r7"
    queue = await UsageQueue.open(tmp_path / "queue")
    assert queue.read_run(100) is None
    shipper = UsageShipper(queue, _settings(server.url, max_batch_bytes=size * 6))
    shipper.start()
    try:
        await _until(lambda: queue.stats().depth == 0)
    finally:
        await shipper.stop()
        await queue.close()
    assert {e["request_id"] for e in server.stored.values()} == {f"r{i}" for i in range(20)} - {
        "r7"
    }
    assert queue.stats().dead_lettered == 1
    assert max(len(r["events"]) for r in server.requests) == 5


async def test_batches_cut_by_bytes_do_not_wait(queue: UsageQueue, server: IngestServer) -> None:
    size = len(_event(0).to_json())
    await _offer(queue, range(1000))
    settings = _settings(server.url, batch_events=500, max_batch_bytes=size * 101, fill_wait_s=30)
    await _ship_until(queue, settings, lambda: len(server.stored) == 1000, timeout=10)
    assert [len(request["events"]) for request in server.requests] == [100] * 10


async def test_rejected_event_dropped_meanwhile(tmp_path: Path) -> None:
    # The only rejected event is dropped for newer ones before the shipper dead-letters it.
    queue = await UsageQueue.open(tmp_path / "queue", QueueSettings(max_events=10))

    class DroppingServer(IngestServer):
        async def _ingest(self, request: web.Request) -> web.Response:
            payload = orjson.loads(await request.read())
            if [event["request_id"] for event in payload["events"]] == ["r0"]:
                await _offer(queue, range(10, 15))
            return await super()._ingest(request)

    server = DroppingServer(free_port())
    server.reject = lambda event: event["request_id"] == "r0"
    await server.start()
    await _offer(queue, range(10))
    shipper = UsageShipper(queue, _settings(server.url, batch_events=10))
    shipper.start()
    try:
        await _until(lambda: queue.stats().depth == 0)
    finally:
        await shipper.stop()
        await server.stop()
        await queue.close()
    assert queue.stats().dropped_oldest == 5
    assert queue.stats().dead_lettered == 0
    assert shipper.stats.dead_lettered == 0
