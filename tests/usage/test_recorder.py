"""UsageRecorder: one event per request, to the queue and the metrics, never raising."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartflow.core.types import ChatResponse, Usage
from smartflow.providers.base import Deployment, Secret
from smartflow.providers.openai import OpenAIProvider
from smartflow.telemetry.metrics import GatewayMetrics
from smartflow.usage.builder import UsageBuilder
from smartflow.usage.events import UsageEvent
from smartflow.usage.prices import PriceCatalog
from smartflow.usage.queue import QueueSettings, UsageQueue
from smartflow.usage.recorder import UsageRecorder

# Read for its name and kind only; nothing is sent to this URL.
OPENAI = OpenAIProvider("openai-main", api_key=Secret("fake"), base_url="http://127.0.0.1:9/v1")


def _served(builder: UsageBuilder) -> None:
    builder.set_model_requested("gpt-4o")
    builder.set_deployment(Deployment("gpt-4o", OPENAI, "gpt-4o"))
    builder.record_response(ChatResponse("c1", "gpt-4o", usage=Usage(1_000_000, 0)))


async def test_emit_queues_and_records(tmp_path: Path) -> None:
    queue = await UsageQueue.open(tmp_path / "queue")
    metrics = GatewayMetrics()
    recorder = UsageRecorder(
        instance="gw-3", site="us", prices=PriceCatalog.default(), queue=queue, metrics=metrics
    )
    try:
        builder = recorder.start("req_1", "openai")
        _served(builder)
        event = recorder.emit(builder, 200)
        assert recorder.emit(builder, 500) is None  # the same request is emitted once
        await queue.flush()
        stored = await queue.read_batch(10)
    finally:
        await queue.close()

    assert event is not None
    assert event.instance == "gw-3"
    assert event.site == "us"
    assert event.cost_usd == "2.5"
    assert len(stored) == 1
    assert UsageEvent.from_json(stored[0].body) == event
    assert b'gen_ai_request_model="gpt-4o"' in metrics.render()[0]


async def test_full_queue_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    queue = await UsageQueue.open(tmp_path / "queue", QueueSettings(buffer_events=1))
    recorder = UsageRecorder(instance="gw", site="s", prices=PriceCatalog.default(), queue=queue)
    try:
        events = [recorder.emit(recorder.start(f"req_{i}", "openai"), 200) for i in range(3)]
    finally:
        await queue.close()
    assert all(event is not None for event in events)
    assert queue.stats().buffer_overflow == 2
    assert "queue rejected the event of request req_1" in caplog.text


def test_broken_builder_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    class BrokenCatalog(PriceCatalog):
        def cost_text(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            raise RuntimeError("catalogue failure")

    recorder = UsageRecorder(instance="gw", site="s", prices=BrokenCatalog())
    builder = recorder.start("req_9", "openai")
    _served(builder)
    assert recorder.emit(builder, 200) is None
    assert "building the event of a request failed" in caplog.text
