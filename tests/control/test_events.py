"""POST /v1/events and the analytics API against a running control plane, on SQLite and
the real PostgreSQL, fed with real ``UsageEvent`` objects and by the real shipper."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from smartflow.core.types import Usage
from smartflow.providers.base import Secret
from smartflow.usage.events import (
    AttemptRecord,
    PolicySummary,
    TokenCounts,
    UsageEvent,
    new_event_id,
    utc_timestamp,
)
from smartflow.usage.prices import PriceCatalog
from smartflow.usage.queue import UsageQueue
from smartflow.usage.shipper import ShipperSettings, UsageShipper
from tests.control.conftest import ADMIN_TOKEN, Api

HOUR_S = 3600
# A fixed hour in the past, so the tests choose their window exactly.
BASE_S = 1_780_000_000 - 1_780_000_000 % HOUR_S


@pytest.fixture(params=["sqlite", "postgresql"])
def api_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def usage_event(instance: str = "onprem-1", site: str = "onprem", **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "event_id": new_event_id(),
        "request_id": "req_" + uuid.uuid4().hex,
        "started_at": utc_timestamp(BASE_S + 60),
        "instance": instance,
        "site": site,
        "dialect": "openai",
        "key_name": "app-a",
        "team": "finance",
        "provider": "openai",
        "provider_kind": "openai",
        "deployment": "openai/gpt-4o",
        "model_requested": "gpt-4o",
        "model_served": "gpt-4o-2024-08-06",
        "tokens": TokenCounts(input=1000, output=200, cached_input=100),
        "usage_source": "provider",
        "cost_usd": "0.0043",
        "latency_ms": 100.0,
        "status": 200,
        "finish_reason": "stop",
        "attempts": [AttemptRecord("openai/gpt-4o")],
    }
    values.update(fields)
    return UsageEvent(**values)


def batch(instance: str, events: list[Any]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "instance": instance,
        "site": "onprem",
        "batch_id": new_event_id(),
        "sent_at": utc_timestamp(time.time()),
        "events": [orjson.loads(e.to_json()) if isinstance(e, UsageEvent) else e for e in events],
    }


async def post_events(api: Api, credential: str, body: Any) -> tuple[int, Any]:
    return await api.call("POST", "/v1/events", token=credential, json=body)


@pytest.fixture
async def onprem(api: Api) -> str:
    enrolled = await api.enroll("onprem-1", "onprem")
    return str(enrolled["credential"])


WINDOW = {"from": utc_timestamp(BASE_S), "to": utc_timestamp(BASE_S + 4 * HOUR_S)}


# --- ingest --------------------------------------------------------------------------------


async def test_batch_stored_once(api: Api, onprem: str) -> None:
    events = [usage_event() for _ in range(50)]
    status, body = await post_events(api, onprem, batch("onprem-1", events))
    assert status == 200, body
    assert body == {"received": 50, "stored": 50, "duplicates": 0}
    status, body = await post_events(api, onprem, batch("onprem-1", events))
    assert status == 200
    assert body == {"received": 50, "stored": 0, "duplicates": 50}
    report = await api.ok("GET", "/v1/analytics/usage", params=WINDOW)
    assert report["totals"]["requests"] == 50


async def test_repeat_within_batch_stored_once(api: Api, onprem: str) -> None:
    event = usage_event()
    status, body = await post_events(api, onprem, batch("onprem-1", [event, event]))
    assert status == 200
    assert body["stored"] == 1


async def test_ingest_needs_instance_credential(api: Api, onprem: str) -> None:
    body = batch("onprem-1", [usage_event()])
    status, reply = await post_events(api, "sf-inst-wrong", body)
    assert status == 401
    assert "instance credential" in reply["error"]["message"]
    status, _ = await api.call("POST", "/v1/events", token=None, json=body)
    assert status == 401


async def test_event_of_other_instance_forbidden(api: Api, onprem: str) -> None:
    status, reply = await post_events(
        api, onprem, batch("onprem-1", [usage_event(), usage_event(instance="cloud-1")])
    )
    assert status == 403
    assert "events[1].instance" in reply["error"]["message"]
    status, _ = await post_events(api, onprem, batch("cloud-1", [usage_event()]))
    assert status == 403


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"tokens": {"input": -1}}, "events[1].tokens.input"),
        ({"cost_usd": "abc"}, "events[1].cost_usd"),
        ({"started_at": "yesterday"}, "events[1].started_at"),
        ({"started_at": "2026-01-01T00:00:00"}, "events[1].started_at"),
        ({"event_id": None}, "events[1].event_id"),
        ({"schema_version": 99}, "events[1].schema_version"),
        ({"cache": "maybe"}, "events[1].cache"),
        (
            {"policy": {"request_entities": {"EMAIL": "x"}}},
            "events[1].policy.request_entities.EMAIL",
        ),
        ({"status": 1234}, "events[1].status"),
        ({"entry_instance": 7}, "events[1].entry_instance"),
        ({"latency_ms": 1e308}, "events[1].latency_ms"),
        ({"ttft_ms": 8 * 24 * 3600 * 1000}, "events[1].ttft_ms"),
    ],
)
async def test_invalid_event_rejected_with_field(
    api: Api, onprem: str, change: dict[str, Any], path: str
) -> None:
    bad = orjson.loads(usage_event().to_json())
    bad.update(change)
    status, reply = await post_events(api, onprem, batch("onprem-1", [usage_event(), bad]))
    assert status == 422
    assert [issue["path"] for issue in reply["error"]["issues"]] == [path]
    report = await api.ok("GET", "/v1/analytics/usage", params=WINDOW)
    assert report["totals"]["requests"] == 0, "a rejected batch must store nothing"


async def test_forwarded_event_keeps_entry(api: Api, onprem: str) -> None:
    forwarded = usage_event(entry_instance="cloud-1", entry_site="cloud")
    local = usage_event()
    status, body = await post_events(api, onprem, batch("onprem-1", [forwarded, local]))
    assert status == 200, body
    page = await api.ok("GET", "/v1/analytics/events", params=WINDOW)
    items = {item["event_id"]: item for item in page["items"]}
    assert items[forwarded.event_id]["entry_instance"] == "cloud-1"
    assert items[forwarded.event_id]["entry_site"] == "cloud"
    assert items[forwarded.event_id]["site"] == "onprem"
    assert items[local.event_id]["entry_instance"] is None
    assert items[local.event_id]["entry_site"] is None


async def test_malformed_batches_rejected(api: Api, onprem: str) -> None:
    status, _ = await post_events(api, onprem, {"events": "no"})
    assert status == 400
    status, reply = await post_events(api, onprem, {**batch("onprem-1", []), "schema_version": 2})
    assert status == 422
    assert reply["error"]["issues"][0]["path"] == "schema_version"
    too_many = batch("onprem-1", [{}] * 10_001)
    status, _ = await post_events(api, onprem, too_many)
    assert status == 413


# --- aggregates ---------------------------------------------------------------------------


def traffic_mix() -> list[UsageEvent]:
    """Seven events over two hours, two models and two teams, with policy and quality facets."""
    hour1 = utc_timestamp(BASE_S + 60)
    hour2 = utc_timestamp(BASE_S + HOUR_S + 60)
    pii = PolicySummary(
        policies=["pii"],
        request_entities={"EMAIL": 2, "PHONE": 1},
        response_entities={"EMAIL": 1},
        actions={"EMAIL": "mask", "PHONE": "block"},
        rules=["content/no-secrets"],
    )
    blocked = PolicySummary(policies=["pii"], request_entities={"IBAN": 1}, blocked_by="pii/IBAN")
    onprem_only = PolicySummary(policies=["eu"], residency="confidential:eu", audit_policies=["eu"])
    return [
        usage_event(started_at=hour1, latency_ms=100.0, policy=pii),
        usage_event(started_at=hour1, latency_ms=200.0, cache="hit", policy=onprem_only),
        usage_event(started_at=hour1, latency_ms=300.0, cache="miss", finish_reason="length"),
        usage_event(
            started_at=hour1,
            latency_ms=400.0,
            status=400,
            error_type="policy_blocked",
            tokens=TokenCounts(),
            cost_usd=None,
            finish_reason=None,
            usage_source="none",
            policy=blocked,
        ),
        usage_event(
            started_at=hour2,
            team="research",
            model_requested="claude",
            provider="anthropic",
            latency_ms=1000.0,
            stream=True,
            ttft_ms=50.0,
            cost_usd="0.000000000001",
            attempts=[
                AttemptRecord("openai/gpt-4o", "upstream_timeout", 504),
                AttemptRecord("anthropic/claude"),
            ],
        ),
        usage_event(
            started_at=hour2,
            team="research",
            model_requested="claude",
            provider="anthropic",
            latency_ms=2000.0,
            stream=True,
            ttft_ms=150.0,
            status=502,
            error_type="upstream_unavailable",
            cost_usd=None,
            price_missing=True,
        ),
        usage_event(
            started_at=hour2, status=499, client_disconnected=True, error_type="client_disconnected"
        ),
    ]


async def test_usage_grouped_by_model_and_hour(api: Api, onprem: str) -> None:
    status, _ = await post_events(api, onprem, batch("onprem-1", traffic_mix()))
    assert status == 200
    report = await api.ok(
        "GET", "/v1/analytics/usage", params={**WINDOW, "group_by": "model", "bucket": "hour"}
    )
    rows = {(r["bucket"], r["group"]["model"]): r for r in report["rows"]}
    assert list(rows) == [
        (utc_timestamp(BASE_S).replace(".000", ""), "gpt-4o"),
        (utc_timestamp(BASE_S + HOUR_S).replace(".000", ""), "claude"),
        (utc_timestamp(BASE_S + HOUR_S).replace(".000", ""), "gpt-4o"),
    ]
    first = rows[(report["rows"][0]["bucket"], "gpt-4o")]
    assert first["requests"] == 4
    assert first["errors"] == 1
    assert first["tokens"]["input"] == 3000
    assert first["tokens"]["cached_input"] == 300
    assert first["tokens"]["total"] == 3600
    assert Decimal(first["cost_usd"]) == Decimal("0.0129")
    totals = report["totals"]
    assert totals["requests"] == 7
    assert totals["errors"] == 2, "499 is not an error; 400 and 502 are"
    assert Decimal(totals["cost_usd"]) == Decimal("0.0172") + Decimal("0.000000000001")
    assert totals["unpriced_requests"] == 1
    assert totals["group"] == {}
    assert totals["bucket"] is None


async def test_filters_narrow_the_rows(api: Api, onprem: str) -> None:
    await post_events(api, onprem, batch("onprem-1", traffic_mix()))
    report = await api.ok("GET", "/v1/analytics/usage", params={**WINDOW, "team": "research"})
    assert report["totals"]["requests"] == 2
    report = await api.ok(
        "GET", "/v1/analytics/usage", params={**WINDOW, "model": "claude,gpt-4o", "site": "x"}
    )
    assert report["totals"]["requests"] == 0
    later = {"from": utc_timestamp(BASE_S + HOUR_S), "to": WINDOW["to"]}
    report = await api.ok("GET", "/v1/analytics/usage", params=later)
    assert report["totals"]["requests"] == 3


async def test_compliance_counts(api: Api, onprem: str) -> None:
    await post_events(api, onprem, batch("onprem-1", traffic_mix()))
    report = await api.ok("GET", "/v1/analytics/compliance", params=WINDOW)
    totals = report["totals"]
    assert totals["requests"] == 7
    assert totals["requests_with_detections"] == 2
    assert totals["detections"] == {"EMAIL": 3, "PHONE": 1, "IBAN": 1}
    assert totals["response_detections"] == {"EMAIL": 1}
    assert totals["redactions"] == {"EMAIL": 3}
    assert totals["actions"] == {"mask": 1, "block": 1}
    assert totals["blocks"] == {"pii/IBAN": 1}
    assert totals["blocked_requests"] == 1
    assert totals["rules_fired"] == {"content/no-secrets": 1}
    assert totals["residency_routes"] == 1
    assert totals["residency_rules"] == {"confidential:eu": 1}
    assert totals["audit_only_requests"] == 1


async def test_quality_percentiles_and_rates(api: Api, onprem: str) -> None:
    await post_events(api, onprem, batch("onprem-1", traffic_mix()))
    report = await api.ok("GET", "/v1/analytics/quality", params={**WINDOW, "group_by": "team"})
    finance = next(r for r in report["rows"] if r["group"]["team"] == "finance")
    # Latencies 100, 200, 300, 400 and 100 (the 499): sorted 100, 100, 200, 300, 400.
    assert finance["latency_ms"]["p50"] == 200.0
    assert finance["latency_ms"]["p90"] == pytest.approx(360.0)
    assert finance["ttft_ms"] is None
    assert finance["cache"]["hit"] == 1
    assert finance["cache_hit_rate"] == 0.5
    assert finance["finish_reasons"] == {"stop": 3, "length": 1}
    assert finance["truncation_rate"] == 0.25
    assert finance["client_disconnects"] == 1
    research = next(r for r in report["rows"] if r["group"]["team"] == "research")
    assert research["ttft_ms"]["p50"] == 100.0
    assert research["fallbacks"] == 1
    assert research["fallback_rate"] == 0.5
    assert research["upstream_errors"] == 1
    assert research["error_rate"] == 0.5
    assert report["totals"]["error_types"] == {
        "policy_blocked": 1,
        "upstream_unavailable": 1,
        "client_disconnected": 1,
    }


async def test_feedback_joined_by_request_and_key(api: Api, onprem: str) -> None:
    events = traffic_mix()
    target = events[0]

    def feedback(score: float, key: str) -> dict[str, Any]:
        return {
            "type": "feedback",
            "schema_version": 1,
            "event_id": new_event_id(),
            "request_id": target.request_id,
            "created_at": utc_timestamp(BASE_S + 120),
            "instance": "onprem-1",
            "site": "onprem",
            "key_name": key,
            "score": score,
        }

    scores = [feedback(1.0, "app-a"), feedback(0.5, "app-a"), feedback(0.0, "other-key")]
    status, reply = await post_events(api, onprem, batch("onprem-1", [*events, *scores]))
    assert status == 200, reply
    assert reply["stored"] == len(events) + 3
    report = await api.ok("GET", "/v1/analytics/quality", params=WINDOW)
    assert report["totals"]["feedback"] == {
        "count": 2,
        "mean_score": 0.75,
        "min_score": 0.5,
        "max_score": 1.0,
    }
    bad = feedback(1.5, "app-a")
    status, reply = await post_events(api, onprem, batch("onprem-1", [bad]))
    assert status == 422
    assert reply["error"]["issues"][0]["path"] == "events[0].score"


async def test_overview_and_events_page(api: Api, onprem: str) -> None:
    events = traffic_mix()
    await post_events(api, onprem, batch("onprem-1", events))
    overview = await api.ok("GET", "/v1/analytics/overview", params=WINDOW)
    assert overview["usage"]["requests"] == 7
    assert overview["compliance"]["blocked_requests"] == 1
    assert overview["quality"]["requests"] == 7
    assert overview["last_event_at"] == utc_timestamp(BASE_S + HOUR_S + 60).replace(".000", "")
    page = await api.ok("GET", "/v1/analytics/events", params={**WINDOW, "limit": 4})
    assert len(page["items"]) == 4
    rest = await api.ok(
        "GET", "/v1/analytics/events", params={**WINDOW, "before": page["next_before"]}
    )
    assert rest["next_before"] is None
    ids = [item["event_id"] for item in page["items"] + rest["items"]]
    assert sorted(ids, reverse=True) == ids
    assert set(ids) == {e.event_id for e in events}


async def test_zero_cost_in_fixed_point(api: Api, onprem: str) -> None:
    # A failed request costs nothing; its cost reads 0.000000000000, not 0E-12.
    failed = usage_event(
        cost_usd=None, status=401, error_type="authentication_failed", team="failing"
    )
    cheapest = usage_event(cost_usd="0.000000000001", team="cheap")
    await post_events(api, onprem, batch("onprem-1", [failed, cheapest]))
    report = await api.ok("GET", "/v1/analytics/usage", params={**WINDOW, "group_by": "team"})
    costs = {row["group"]["team"]: row["cost_usd"] for row in report["rows"]}
    assert costs == {"cheap": "0.000000000001", "failing": "0.000000000000"}


async def test_csv_export(api: Api, onprem: str) -> None:
    await post_events(api, onprem, batch("onprem-1", traffic_mix()))
    params = {**WINDOW, "group_by": "team", "format": "csv"}
    async with api.http.get(
        api.url + "/v1/analytics/usage",
        params=params,
        headers={"Authorization": "Bearer " + ADMIN_TOKEN},
    ) as reply:
        assert reply.status == 200
        assert reply.content_type == "text/csv"
        assert "usage.csv" in reply.headers["Content-Disposition"]
        text = await reply.text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {row["group.team"]: row["requests"] for row in rows} == {
        "finance": "5",
        "research": "2",
    }
    assert "tokens.cached_input" in rows[0]
    status, body = await api.call("GET", "/v1/analytics/events", params={**WINDOW, "format": "csv"})
    assert status == 200
    lines = list(csv.DictReader(io.StringIO(body)))
    assert len(lines) == 7
    assert orjson.loads(next(r["policy"] for r in lines if r["policy"]))["policies"] == ["pii"]


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"group_by": "colour"}, "group_by"),
        ({"group_by": "site,team,model,key"}, "group_by"),
        ({"bucket": "week"}, "bucket"),
        (
            {"bucket": "minute", "from": "2026-01-01T00:00:00Z", "to": "2026-01-03T00:00:00Z"},
            "bucket",
        ),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, ""),
        ({"from": "2026-01-01T00:00:00"}, "from"),
    ],
)
async def test_invalid_query_is_422(api: Api, params: dict[str, str], path: str) -> None:
    status, body = await api.call("GET", "/v1/analytics/usage", params=params)
    assert status == 422, body
    assert body["error"]["issues"][0]["path"] == path


async def test_viewer_reads_analytics(api: Api) -> None:
    viewer = await api.ok("POST", "/v1/admin-tokens", json={"name": "ro", "role": "viewer"})
    status, _ = await api.call("GET", "/v1/analytics/overview", token=viewer["token"])
    assert status == 200
    status, _ = await api.call("GET", "/v1/analytics/overview", token=None)
    assert status == 401


# --- the real shipper ----------------------------------------------------------------------


async def test_shipper_delivers_to_control_plane(api: Api, onprem: str, tmp_path: Path) -> None:
    queue = await UsageQueue.open(tmp_path / "queue")
    events = traffic_mix()
    for event in events:
        assert queue.offer(event)
    settings = ShipperSettings(
        url=api.url + "/v1/events",
        credential=Secret(onprem),
        instance="onprem-1",
        site="onprem",
        batch_events=3,
        idle_wait_s=0.05,
    )
    shipper = UsageShipper(queue, settings)
    shipper.start()
    try:
        async with asyncio.timeout(20):
            while shipper.stats.shipped < len(events):
                await asyncio.sleep(0.05)
    finally:
        await shipper.stop()
        await queue.close()
    assert shipper.stats.dead_lettered == 0
    report = await api.ok("GET", "/v1/analytics/usage", params=WINDOW)
    assert report["totals"]["requests"] == len(events)


# --- the central price catalogue ---------------------------------------------------------

OVERLAY = {
    "openai": {
        "models": {
            "gpt-4o": {"input": 1.0, "output": 2.0, "as_of": "2026-08-01"},
            "house-model": {"input": 0.5, "output": 0.5, "request": 0.001, "as_of": "2026-08-01"},
        }
    }
}


async def test_price_catalog_put_reaches_snapshot(api: Api) -> None:
    empty = await api.ok("GET", "/v1/price-catalog")
    assert empty["version"] == 0
    assert empty["providers"] == {}
    stored = await api.ok("PUT", "/v1/price-catalog", json={"providers": OVERLAY})
    assert stored["version"] == 1
    assert stored["updated_by"] == "bootstrap"
    again = await api.ok("PUT", "/v1/price-catalog", json={"providers": OVERLAY})
    assert again["version"] == 1, "an unchanged catalogue must not make a new version"
    assert (await api.ok("GET", "/v1/price-catalog"))["providers"] == OVERLAY

    head = (await api.ok("GET", "/v1/snapshots", params={"limit": 1}))["items"][0]["version"]
    snapshot = await api.ok("GET", f"/v1/snapshots/{head}")
    prices = snapshot["content"]["prices"]
    assert prices["version"] == 1
    catalog = PriceCatalog.with_overlay(prices["providers"], prices["version"])
    assert catalog.version == "central-1"
    cost = catalog.cost("openai", ("gpt-4o",), Usage(input_tokens=1_000_000, output_tokens=0))
    assert cost.usd == Decimal("1.0")
    packaged = catalog.cost("openai", ("gpt-4o-mini",), Usage(input_tokens=1_000_000))
    assert packaged.usd == Decimal("0.15"), "entries not in the overlay keep the packaged rate"


async def test_price_catalog_rejects_invalid_entry(api: Api) -> None:
    broken = {"openai": {"models": {"gpt-4o": {"input": 1.0}}}}
    status, body = await api.call("PUT", "/v1/price-catalog", json={"providers": broken})
    assert status == 422
    issue = body["error"]["issues"][0]
    assert issue["path"] == "providers"
    assert "gpt-4o" in issue["message"]
    viewer = await api.ok("POST", "/v1/admin-tokens", json={"name": "ro2", "role": "viewer"})
    status, _ = await api.call(
        "PUT", "/v1/price-catalog", token=viewer["token"], json={"providers": OVERLAY}
    )
    assert status == 403
