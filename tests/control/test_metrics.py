"""GET /metrics on a running control plane, parsed by prometheus_client's text parser."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.control.conftest import Api, wait_for
from tests.control.test_events import batch, usage_event


async def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of ``/metrics`` by name and sorted labels."""
    status, text = await api.call("GET", "/metrics")
    assert status == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_needs_admin_token(api: Api) -> None:
    status, body = await api.call("GET", "/metrics", token=None)
    assert status == 401
    assert body["error"]["code"] == "authentication_failed"
    status, _ = await api.call("GET", "/metrics", token="sf-admin-wrong-" + "b" * 32)
    assert status == 401


async def test_metrics_count_routes_and_statuses(api: Api) -> None:
    await api.ok("GET", "/v1/instances")
    await api.ok("GET", "/v1/instances")
    status, _ = await api.call("GET", "/v1/instances/no-such-instance")
    assert status == 404
    status, _ = await api.call("GET", "/v1/no-such-endpoint")
    assert status == 404
    samples = await scrape(api)
    total = "smartflow_control_http_requests_total"
    assert value(samples, total, method="GET", route="/v1/instances", status="200") == 2
    # The route template, not the path, so ids in paths add no series.
    assert value(samples, total, method="GET", route="/v1/instances/{name}", status="404") == 1
    assert value(samples, total, method="GET", route="unmatched", status="404") == 1
    assert not any("no-such" in str(key) for key in samples)


async def test_metrics_count_ingest_results(api: Api) -> None:
    enrolled = await api.enroll("onprem-1", "onprem")
    credential = enrolled["credential"]
    first = usage_event()
    body = batch("onprem-1", [first, usage_event()])
    await api.ok("POST", "/v1/events", token=credential, json=body)
    # The same batch again: both events are duplicates.
    await api.ok("POST", "/v1/events", token=credential, json=body)
    invalid = batch("onprem-1", [{**body["events"][0], "status": "ok"}])
    status, _ = await api.call("POST", "/v1/events", token=credential, json=invalid)
    assert status == 422
    status, _ = await api.call("POST", "/v1/events", token="sf-inst-wrong", json=body)
    assert status == 401

    samples = await scrape(api)
    events = "smartflow_control_ingest_events_total"
    assert value(samples, events, result="stored") == 2
    assert value(samples, events, result="duplicate") == 2
    rejected = "smartflow_control_ingest_rejected_batches_total"
    assert value(samples, rejected, code="invalid_object") == 1
    assert value(samples, rejected, code="authentication_failed") == 1
    assert value(samples, "smartflow_control_ingest_duration_seconds_count") == 4
    assert value(samples, "smartflow_control_ingest_duration_seconds_sum") > 0


async def test_metrics_show_streams_and_versions(api: Api) -> None:
    before = await scrape(api)
    head = value(before, "smartflow_control_snapshot_head_version")
    assert head >= 1
    assert value(before, "smartflow_control_sync_streams") == 0

    await api.ok("PUT", "/v1/teams/finance", json={})
    enrolled = await api.enroll("onprem-1", "onprem")
    headers = {"Authorization": f"Bearer {enrolled['credential']}"}
    async with api.http.ws_connect(api.url + enrolled["sync_path"], headers=headers) as stream:
        await stream.receive_json(timeout=5)

        async def connected() -> bool:
            samples = await scrape(api)
            return value(samples, "smartflow_control_sync_streams") == 1

        await wait_for(connected)
        after = await scrape(api)
    made = "smartflow_control_snapshot_versions_made_total"
    assert value(after, made) - value(before, made) >= 1
    assert value(after, "smartflow_control_snapshot_head_version") > head
