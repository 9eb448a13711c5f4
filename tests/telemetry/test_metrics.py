"""Prometheus metrics from usage events, the /metrics handler and the Grafana dashboard."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from smartflow.providers.base import Secret
from smartflow.telemetry.metrics import GatewayMetrics
from smartflow.usage.events import (
    AttemptRecord,
    PolicySummary,
    TokenCounts,
    UsageEvent,
    new_event_id,
    utc_timestamp,
)
from smartflow.usage.queue import UsageQueue
from smartflow.usage.shipper import ShipperSettings, UsageShipper
from tests.conftest import free_port, start_stack, stop_stack
from tests.gateway.clients import openai_client
from tests.usage.ingest_server import TOKEN, IngestServer

DASHBOARD = Path(__file__).parents[2] / "grafana" / "smartflow-dashboard.json"


def _event(**overrides: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "event_id": new_event_id(),
        "request_id": "req_1",
        "started_at": utc_timestamp(0),
        "instance": "gw",
        "site": "local",
        "dialect": "openai",
        "provider": "openai-main",
        "provider_kind": "openai",
        "deployment": "openai-main/gpt-4o",
        "model_requested": "gpt-4o",
        "model_served": "gpt-4o-2024-08-06",
        "team": "finance",
        "tokens": TokenCounts(input=1000, output=200, cached_input=400, reasoning=50),
        "usage_source": "provider",
        "cost_usd": "0.0045",
        "latency_ms": 750.0,
        "status": 200,
        "attempts": [AttemptRecord("openai-main/gpt-4o")],
    }
    values.update(overrides)
    return UsageEvent(**values)


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _value(text: str, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    matches = [v for (n, ls), v in _samples(text).items() if n == name and wanted <= ls]
    assert len(matches) == 1, (name, labels, len(matches))
    return matches[0]


def _sample_events() -> list[UsageEvent]:
    return [
        _event(stream=True, ttft_ms=120.0),
        _event(
            request_id="req_2",
            status=502,
            error_type="upstream_unavailable",
            usage_source="none",
            tokens=TokenCounts(),
            cost_usd=None,
            attempts=[
                AttemptRecord("openai-main/gpt-4o", "upstream_overloaded", 529),
                AttemptRecord("azure/gpt-4o", "upstream_unavailable", 502),
            ],
        ),
        _event(
            request_id="req_3",
            provider_kind="anthropic",
            model_requested="claude-x",
            model_served="claude-x",
            cost_usd=None,
            price_missing=True,
            normalization=[{"param": "temperature", "rule": "clamp"}],
            policy=PolicySummary(
                policies=["pii"],
                request_entities={"EMAIL": 2},
                actions={"EMAIL": "mask"},
                blocked_by="pii/EMAIL",
            ),
        ),
        _event(
            request_id="req_4",
            stream=True,
            ttft_ms=80.0,
            client_disconnected=True,
            status=499,
            error_type="client_disconnected",
            usage_source="estimated",
            cost_usd="0.001",
        ),
    ]


def test_records_genai_metrics() -> None:
    metrics = GatewayMetrics()
    for event in _sample_events():
        metrics.record(event)
    text, _ = metrics.render()
    body = text.decode()
    genai = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "openai",
        "gen_ai_request_model": "gpt-4o",
        "gen_ai_response_model": "gpt-4o-2024-08-06",
    }
    # One gpt-4o event on OpenAI has the provider's counts; the estimated one stays out.
    assert _value(body, "gen_ai_client_token_usage_count", gen_ai_token_type="input", **genai) == 1
    assert _value(body, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", **genai) == 1000
    assert _value(body, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **genai) == 200
    assert (
        _value(
            body,
            "gen_ai_client_token_usage_bucket",
            gen_ai_token_type="input",
            le="1024.0",
            **genai,
        )
        == 1
    )
    openai = {"gen_ai_provider_name": "openai"}
    assert _value(body, "smartflow_token_details_total", type="cached_input", **openai) == 400
    assert _value(body, "smartflow_token_details_total", type="reasoning", **openai) == 50
    assert (
        _value(body, "gen_ai_client_operation_duration_seconds_count", error_type="", **genai) == 1
    )
    assert _value(
        body,
        "gen_ai_client_operation_duration_seconds_sum",
        error_type="client_disconnected",
        **genai,
    ) == pytest.approx(0.75)
    assert _value(body, "gen_ai_server_time_to_first_token_seconds_count", **genai) == 2
    assert _value(body, "gen_ai_server_time_to_first_token_seconds_sum", **genai) == pytest.approx(
        0.2
    )


def test_records_gateway_counters() -> None:
    metrics = GatewayMetrics()
    for event in _sample_events():
        metrics.record(event)
    body = metrics.render()[0].decode()
    assert (
        _value(body, "smartflow_requests_total", status="200", gen_ai_request_model="gpt-4o") == 1
    )
    assert _value(body, "smartflow_requests_total", error_type="upstream_unavailable") == 1
    assert _value(body, "smartflow_fallbacks_total", gen_ai_request_model="gpt-4o") == 1
    assert (
        _value(
            body,
            "smartflow_upstream_attempts_total",
            deployment="azure/gpt-4o",
            outcome="upstream_unavailable",
        )
        == 1
    )
    assert (
        _value(
            body, "smartflow_upstream_attempts_total", deployment="openai-main/gpt-4o", outcome="ok"
        )
        == 3
    )
    assert _value(
        body, "smartflow_usage_cost_usd_total", gen_ai_request_model="gpt-4o", team="finance"
    ) == pytest.approx(0.0055)
    assert (
        _value(body, "smartflow_usage_unpriced_requests_total", gen_ai_provider_name="anthropic")
        == 1
    )
    assert _value(body, "smartflow_usage_events_total", usage_source="estimated") == 1
    assert _value(body, "smartflow_normalization_changes_total", param="temperature") == 1
    assert _value(body, "smartflow_policy_entities_total", entity_type="EMAIL") == 2
    assert _value(body, "smartflow_policy_actions_total", action="mask") == 1
    assert _value(body, "smartflow_policy_blocked_requests_total") == 1
    assert _value(body, "smartflow_client_disconnects_total") == 1


def test_label_values_are_capped() -> None:
    metrics = GatewayMetrics(max_label_values=3)
    for index in range(6):
        metrics.record(_event(model_requested=f"random-{index}"))
    body = metrics.render()[0].decode()
    models = {
        dict(labels)["gen_ai_request_model"]
        for (name, labels) in _samples(body)
        if name == "smartflow_requests_total"
    }
    assert models == {"random-0", "random-1", "random-2", "_other"}
    assert _value(body, "smartflow_requests_total", gen_ai_request_model="_other") == 3


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[tuple[UsageQueue, UsageShipper]]:
    server = IngestServer(free_port())
    await server.start()
    queue = await UsageQueue.open(tmp_path / "queue")
    settings = ShipperSettings(
        url=server.url, credential=Secret(TOKEN), instance="gw", site="local"
    )
    shipper = UsageShipper(queue, settings)
    try:
        yield queue, shipper
    finally:
        await shipper.stop()
        await queue.close()
        await server.stop()


async def test_pipeline_metrics(pipeline: tuple[UsageQueue, UsageShipper]) -> None:
    queue, shipper = pipeline
    metrics = GatewayMetrics()
    metrics.watch_pipeline(queue, shipper)
    for index in range(5):
        queue.offer(_event(request_id=f"r{index}"))
    await queue.flush()
    body = metrics.render()[0].decode()
    assert _value(body, "smartflow_usage_queue_depth") == 5
    assert _value(body, "smartflow_usage_queue_bytes") > 0
    assert _value(body, "smartflow_usage_queue_backpressure") == 0
    assert _value(body, "smartflow_usage_events_dropped_total", reason="buffer_full") == 0
    assert _value(body, "smartflow_usage_shipped_events_total") == 0

    assert await shipper.ship_once() == 5
    body = metrics.render()[0].decode()
    assert _value(body, "smartflow_usage_queue_depth") == 0
    assert _value(body, "smartflow_usage_shipped_events_total") == 5
    assert _value(body, "smartflow_usage_last_shipped_timestamp_seconds") > 0


async def test_metrics_endpoint_over_http() -> None:
    metrics = GatewayMetrics()
    metrics.record(_event())
    app = web.Application()
    app.router.add_get("/metrics", metrics.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await response.text()
            accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
            async with http.get(f"http://127.0.0.1:{port}/metrics", headers=accept) as response:
                assert response.headers["Content-Type"].startswith("application/openmetrics-text")
                openmetrics = await response.text()
    finally:
        await runner.cleanup()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "gen_ai_client_token_usage" in names
    assert "smartflow_requests" in names
    openmetrics_names = {family.name for family in parse_openmetrics(openmetrics)}
    assert "gen_ai_client_operation_duration_seconds" in openmetrics_names


async def test_dashboard_queries_exported_metrics(
    pipeline: tuple[UsageQueue, UsageShipper],
) -> None:
    queue, shipper = pipeline
    metrics = GatewayMetrics()
    metrics.watch_pipeline(queue, shipper)
    for event in _sample_events():
        metrics.record(event)
        queue.offer(event)
    await queue.flush()
    await shipper.ship_once()
    exported = {name for (name, _labels) in _samples(metrics.render()[0].decode())}

    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    expressions = [t["expr"] for p in panels for t in p["targets"]]
    queried = {m for expr in expressions for m in re.findall(r"([a-z_][a-z0-9_]*)\{", expr)}
    assert queried
    assert queried <= exported, queried - exported

    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("tokens", "cost", "duration percentiles", "first token", "errors", "fallbacks"):
        assert topic in titles, topic
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_histogram_buckets_are_cumulative() -> None:
    metrics = GatewayMetrics()
    # 0.16 s lies on a bound and counts in le="0.16"; 100 s is above the last bound.
    for latency_ms in (5.0, 160.0, 160.0001, 100_000.0):
        metrics.record(_event(latency_ms=latency_ms))
    body = metrics.render()[0].decode()
    name = "gen_ai_client_operation_duration_seconds_bucket"
    assert _value(body, name, le="0.01") == 1
    assert _value(body, name, le="0.08") == 1
    assert _value(body, name, le="0.16") == 2
    assert _value(body, name, le="0.32") == 3
    assert _value(body, name, le="81.92") == 3
    assert _value(body, name, le="+Inf") == 4
    assert _value(body, "gen_ai_client_operation_duration_seconds_count") == 4
    assert _value(body, "gen_ai_client_operation_duration_seconds_sum") == pytest.approx(
        100.3250001, abs=1e-9
    )
    assert (
        _value(
            body, "gen_ai_client_token_usage_bucket", le="1.6777216e+07", gen_ai_token_type="input"
        )
        == 4
    )


def test_created_series_and_unlabelled_counters() -> None:
    metrics = GatewayMetrics()
    body = metrics.render()[0].decode()
    assert _value(body, "smartflow_client_disconnects_total") == 0
    assert "smartflow_requests_total{" not in body
    metrics.record(_event())
    body = metrics.render()[0].decode()
    assert _value(body, "smartflow_requests_created", status="200") > 0
    assert _value(body, "gen_ai_client_operation_duration_seconds_created") > 0


def test_repeated_labels_add_to_the_same_series() -> None:
    # The second and third events reuse the series of the first. The fourth differs in
    # its status, so it gets a request series of its own.
    metrics = GatewayMetrics()
    usage = {"usage_source": "provider", "tokens": TokenCounts(input=10, output=3)}
    for latency in (100.0, 200.0, 300.0):
        metrics.record(_event(latency_ms=latency, **usage))
    metrics.record(_event(status=429, error_type="rate_limited", **usage))
    body = metrics.render()[0].decode()
    requests = {"dialect": "openai", "gen_ai_request_model": "gpt-4o"}
    assert _value(body, "smartflow_requests_total", status="200", error_type="", **requests) == 3
    assert _value(body, "smartflow_requests_total", status="429", **requests) == 1
    assert _value(body, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == 40
    duration = "gen_ai_client_operation_duration_seconds_sum"
    assert _value(body, duration, error_type="") == pytest.approx(0.6)
    assert _value(body, "smartflow_usage_events_total", usage_source="provider") == 4


def test_successful_attempts_keep_the_label_cap() -> None:
    # Successful single tries take a cached path; it must cap deployments as the others do.
    metrics = GatewayMetrics(max_label_values=2)
    for deployment in ("p/a", "p/b", "p/c", "p/a", "p/d"):
        metrics.record(_event(deployment=deployment, attempts=[AttemptRecord(deployment)]))
    metrics.record(_event(attempts=[AttemptRecord("p/e", "upstream_timeout", 504)]))
    body = metrics.render()[0].decode()
    attempts = "smartflow_upstream_attempts_total"
    assert _value(body, attempts, deployment="p/a", outcome="ok") == 2
    assert _value(body, attempts, deployment="p/b", outcome="ok") == 1
    assert _value(body, attempts, deployment="_other", outcome="ok") == 2
    assert _value(body, attempts, deployment="_other", outcome="upstream_timeout") == 1


def test_unpriced_and_first_token_series_appear_when_used() -> None:
    metrics = GatewayMetrics()
    metrics.record(_event())
    body = metrics.render()[0].decode()
    assert "smartflow_usage_unpriced_requests_total{" not in body
    assert "gen_ai_server_time_to_first_token_seconds_count{" not in body
    for _ in range(2):
        metrics.record(_event(cost_usd=None, price_missing=True, stream=True, ttft_ms=30.0))
    body = metrics.render()[0].decode()
    assert _value(body, "smartflow_usage_unpriced_requests_total") == 2
    assert _value(body, "gen_ai_server_time_to_first_token_seconds_count") == 2
    assert _value(body, "gen_ai_server_time_to_first_token_seconds_bucket", le="0.04") == 2


@pytest.mark.parametrize("counted", [True, False])
async def test_instance_metrics_without_usage_events(counted: bool) -> None:
    """Request metrics need no usage events; ``telemetry.metrics: false`` turns them off."""
    stack = await start_stack(telemetry={"metrics": counted})
    try:
        client = openai_client(stack.url)
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        await client.close()
        async with aiohttp.ClientSession() as http:
            async with http.get(stack.url + "/metrics") as response:
                assert response.status == 200
                text = await response.text()
    finally:
        await stop_stack(stack)
    assert not list(Path.cwd().glob("**/usage/queue"))
    names = {family.name for family in text_string_to_metric_families(text)}
    assert ("smartflow_requests" in names) is counted
    if counted:
        assert _value(text, "smartflow_requests_total", gen_ai_request_model="gpt-4o") == 1
        assert _value(text, "gen_ai_client_token_usage_count", gen_ai_token_type="input") == 1
