"""The dashboard in headless Chromium against a real control plane fed with a known mix.

The test signs in, opens every view, checks the figures shown against the analytics API,
applies a filter, and saves a screenshot of each view under ``test-artifacts/dashboard``.
It drives Debian's ``/usr/bin/chromium`` through Playwright and never downloads a browser.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import ConsoleMessage, Page, Response, async_playwright

from smartflow.usage.events import utc_timestamp
from smartflow.usage.shipper import INSTANCE_HEADER
from tests.control.conftest import ADMIN_TOKEN, Api, wait_for
from tests.control.dashboard_traffic import (
    FEEDBACK_MEAN,
    INSTANCES,
    TEAM_REQUESTS,
    TOTAL_REQUESTS,
    batch_body,
    late_events,
    traffic_mix,
)
from tests.control.test_sync import connect, instance_state

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
REJECT_ERROR = "provider openai-eu: base_url is unreachable from this site"


def require_chromium() -> None:
    """Skip when Chromium is missing; fail instead when CI=true."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return
    reason = f"Chromium is not installed at {CHROMIUM}; install it with apt-get install chromium"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}. CI=true requires the dashboard browser test to run")
    pytest.skip(reason)


class PageProblems:
    """Console errors, uncaught exceptions and failed responses seen by the page."""

    def __init__(self, page: Page) -> None:
        self.messages: list[str] = []
        self.expected_statuses: dict[str, int] = {}
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.messages.append(f"page error: {error}"))
        page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        # A failed load is reported again as a console error; _response checks those.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.messages.append(f"console: {message.text}")

    def _response(self, response: Response) -> None:
        path = response.url.split("://", 1)[-1].split("/", 1)[-1].split("?")[0]
        if response.status >= 400 and self.expected_statuses.get(f"/{path}") != response.status:
            self.messages.append(f"HTTP {response.status} for {response.url}")


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    require_chromium()
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 900},
        )
        try:
            yield context.pages[0] if context.pages else await context.new_page()
        finally:
            await context.close()


async def feed_traffic(api: Api) -> dict[str, dict[str, Any]]:
    """Enroll both instances and send the known mix through the ingest endpoint."""
    enrolled = {}
    for name, site in INSTANCES.items():
        enrolled[name] = await api.enroll(name, site)
    for name, events in traffic_mix().items():
        await ship(api, enrolled[name], events)
    return enrolled


async def ship(api: Api, enrolled: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """Send ``events`` as one batch of the enrolled instance, as its shipper does."""
    name = enrolled["instance"]
    status, body = await api.call(
        "POST",
        "/v1/events",
        token=enrolled["credential"],
        headers={INSTANCE_HEADER: name},
        json=batch_body(name, events),
    )
    assert status == 200, body
    assert body["stored"] == len(events)


async def api_report(api: Api, report: str, **params: str) -> Any:
    now = time.time()
    window = {"from": utc_timestamp(now - 24 * 3600), "to": utc_timestamp(now + 1)}
    return await api.ok("GET", f"/v1/analytics/{report}", params={**window, **params})


async def open_view(page: Page, view: str) -> None:
    before = await page.get_attribute("#view", "data-rendered-at")
    await page.click(f'.sidebar nav a[data-view="{view}"]')
    await wait_for_render(page, view, before)


async def wait_for_render(page: Page, view: str, before: str | None) -> None:
    await page.wait_for_function(
        """([view, before]) => {
            const root = document.getElementById("view");
            return root.dataset.view === view && root.dataset.renderedAt !== before;
        }""",
        arg=[view, before],
        timeout=15000,
    )


async def figure(page: Page, metric: str) -> tuple[str, str]:
    """Return the raw API value and the text shown by the figure card ``metric``."""
    card = page.locator(f'#view .kpi[data-metric="{metric}"]')
    raw = await card.get_attribute("data-value")
    assert raw is not None, f"no figure {metric} in the view"
    text = await card.locator(".value").inner_text()
    return raw, text


async def assert_figure(page: Page, metric: str, expected: Any) -> str:
    raw, text = await figure(page, metric)
    if expected is None:
        assert raw == "", f"{metric}: shown {raw!r}, API has no value"
    elif isinstance(expected, str):
        assert raw == expected, f"{metric}: shown {raw!r}, API {expected!r}"
    else:
        assert float(raw) == pytest.approx(float(expected), rel=1e-12), (
            f"{metric}: {raw} != {expected}"
        )
    return text


async def table_rows(page: Page, testid: str) -> list[list[str]]:
    rows = page.locator(f'#view table[data-testid="{testid}"] tbody tr')
    result = []
    for index in range(await rows.count()):
        cells = rows.nth(index).locator("td")
        result.append([text.strip() for text in await cells.all_inner_texts()])
    return result


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# --- the test ------------------------------------------------------------------------------


async def test_dashboard_in_chromium(api: Api, page: Page) -> None:
    enrolled = await feed_traffic(api)
    async with AsyncExitStack() as streams:
        # onprem-1 applies the newest version; cloud-1 rejects the next one.
        onprem = await streams.enter_async_context(connect(api, enrolled["onprem-1"]))
        _, first = await onprem.snapshot()
        await onprem.ack(first.version)
        cloud = await streams.enter_async_context(connect(api, enrolled["cloud-1"]))
        _, cloud_first = await cloud.snapshot()
        await cloud.ack(cloud_first.version)
        await api.ok("PUT", "/v1/teams/research", json={})
        _, second = await cloud.snapshot()
        await cloud.reject(second.version, REJECT_ERROR)
        _, onprem_second = await onprem.snapshot()
        await onprem.ack(onprem_second.version)

        async def states_settled() -> bool:
            onprem_state = await instance_state(api, "onprem-1")
            cloud_state = await instance_state(api, "cloud-1")
            states = (onprem_state["sync_state"], cloud_state["sync_state"])
            return states == ("in_sync", "rejected")

        await wait_for(states_settled)
        await check_dashboard(api, page, enrolled)


async def test_empty_dashboard_explains(api: Api, page: Page) -> None:
    problems = PageProblems(page)
    await sign_in(page, api.url, try_wrong_token=False)
    await wait_for_render(page, "overview", None)
    assert "No usage events match" in await page.inner_text("#view .banner")
    await assert_figure(page, "requests", 0)
    _, text = await figure(page, "cost_usd")
    assert text == "$0.00"
    _, text = await figure(page, "error_rate")
    assert text == "—"
    await screenshot(page, "empty-overview")
    for view in ("cost", "usage", "compliance", "quality"):
        await open_view(page, view)
        assert "No usage events match" in await page.inner_text("#view .banner")
        assert await page.locator("#view canvas").count() == 0
        assert await page.locator("#view .empty-state").count() > 0
    await open_view(page, "instances")
    assert "No instance is enrolled" in await page.inner_text("#view .empty-state")
    await screenshot(page, "empty-instances")
    assert problems.messages == []


async def check_dashboard(api: Api, page: Page, enrolled: dict[str, dict[str, Any]]) -> None:
    problems = PageProblems(page)
    problems.expected_statuses["/dashboard/login"] = 401

    await sign_in(page, api.url)
    overview = await api_report(api, "overview")
    assert overview["usage"]["requests"] == TOTAL_REQUESTS
    await wait_for_render(page, "overview", None)
    await check_overview(page, overview)
    assert await page.input_value('#filters select[name="range"]') == "24h"

    # Every event is in the last hour too, so the figures stay and the charts get
    # one bar per minute.
    before = await page.get_attribute("#view", "data-rendered-at")
    await page.select_option('#filters select[name="range"]', "1h")
    await wait_for_render(page, "overview", before)
    await check_overview(page, overview)
    assert "range=1h" in page.url
    await screenshot(page, "overview")

    for view, check in VIEW_CHECKS.items():
        await open_view(page, view)
        await check(api, page)
        await screenshot(page, view)

    await check_team_filter(api, page)
    await check_session_storage(page)
    await check_live_refresh(api, page, enrolled["onprem-1"])
    await check_custom_range(page)
    assert problems.messages == []

    problems.expected_statuses["/v1/instances"] = 401
    await page.click(".logout button")
    await page.wait_for_url("**/dashboard/login")
    status = await page.evaluate("fetch('/v1/instances').then((reply) => reply.status)")
    assert status == 401
    assert problems.messages == []


async def sign_in(page: Page, base_url: str, *, try_wrong_token: bool = True) -> None:
    await page.goto(f"{base_url}/dashboard/")
    assert page.url.endswith("/dashboard/login")
    if try_wrong_token:
        await page.fill("#token", "sf-admin-wrong-token")
        await page.click("button[type=submit]")
        await page.wait_for_selector(".login-error")
        assert "not accepted" in await page.inner_text(".login-error")
        await screenshot(page, "login-rejected")
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/dashboard/#/overview*")


async def check_overview(page: Page, overview: dict[str, Any]) -> None:
    usage, quality, compliance = overview["usage"], overview["quality"], overview["compliance"]
    text = await assert_figure(page, "requests", usage["requests"])
    assert text == f"{usage['requests']:,}"
    text = await assert_figure(page, "cost_usd", usage["cost_usd"])
    cents = Decimal(usage["cost_usd"]).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    assert text == f"${cents}"
    await assert_figure(page, "tokens_total", usage["tokens"]["total"])
    await assert_figure(page, "error_rate", quality["error_rate"])
    await assert_figure(page, "latency_p95", quality["latency_ms"]["p95"])
    await assert_figure(page, "cache_hit_rate", quality["cache_hit_rate"])
    await assert_figure(page, "requests_with_detections", compliance["requests_with_detections"])
    await assert_figure(page, "blocked_requests", compliance["blocked_requests"])
    _, text = await figure(page, "instances_in_sync")
    assert text == "1 of 2"
    assert await page.locator("#view canvas").count() == 2


async def check_cost(api: Api, page: Page) -> None:
    by_model = await api_report(api, "usage", group_by="model")
    totals = by_model["totals"]
    await assert_figure(page, "cost_usd", totals["cost_usd"])
    await assert_figure(page, "requests", totals["requests"])
    await assert_figure(page, "unpriced_requests", totals["unpriced_requests"])
    assert totals["unpriced_requests"] == 1
    rows = await table_rows(page, "cost-by-model")
    expected = sorted(by_model["rows"], key=lambda row: -float(row["cost_usd"]))
    assert [row[0] for row in rows] == [row["group"]["model"] for row in expected]
    assert [row[1] for row in rows] == [f"{row['requests']:,}" for row in expected]


async def check_usage(api: Api, page: Page) -> None:
    totals = (await api_report(api, "usage"))["totals"]
    await assert_figure(page, "requests", totals["requests"])
    await assert_figure(page, "tokens_input", totals["tokens"]["input"])
    await assert_figure(page, "tokens_output", totals["tokens"]["output"])
    await assert_figure(page, "tokens_total", totals["tokens"]["total"])
    displayed = {
        row[0]: int(row[1].replace(",", "")) for row in await table_rows(page, "usage-by-team")
    }
    assert displayed == {team or "(none)": count for team, count in TEAM_REQUESTS.items()}


async def check_compliance(api: Api, page: Page) -> None:
    totals = (await api_report(api, "compliance"))["totals"]
    await assert_figure(page, "requests_with_detections", totals["requests_with_detections"])
    await assert_figure(page, "detections_total", sum(totals["detections"].values()))
    await assert_figure(page, "redactions_total", sum(totals["redactions"].values()))
    await assert_figure(page, "blocked_requests", totals["blocked_requests"])
    await assert_figure(page, "residency_routes", totals["residency_routes"])
    assert totals["blocked_requests"] == 2
    assert totals["residency_routes"] == 4


async def check_quality(api: Api, page: Page) -> None:
    totals = (await api_report(api, "quality"))["totals"]
    await assert_figure(page, "error_rate", totals["error_rate"])
    await assert_figure(page, "latency_p50", totals["latency_ms"]["p50"])
    await assert_figure(page, "latency_p95", totals["latency_ms"]["p95"])
    await assert_figure(page, "ttft_p95", totals["ttft_ms"]["p95"])
    await assert_figure(page, "fallback_rate", totals["fallback_rate"])
    await assert_figure(page, "cache_hit_rate", totals["cache_hit_rate"])
    await assert_figure(page, "truncation_rate", totals["truncation_rate"])
    await assert_figure(page, "feedback_mean", totals["feedback"]["mean_score"])
    assert totals["feedback"]["mean_score"] == pytest.approx(FEEDBACK_MEAN)
    providers = [row[0] for row in await table_rows(page, "quality-by-provider")]
    assert sorted(providers) == sorted(
        row["group"]["provider"]
        for row in (await api_report(api, "quality", group_by="provider"))["rows"]
    )


async def check_instances(api: Api, page: Page) -> None:
    listed = (await api.ok("GET", "/v1/instances"))["items"]
    await assert_figure(page, "instances", len(listed))
    await assert_figure(page, "instances_in_sync", 1)
    await assert_figure(page, "instances_with_problems", 1)
    await assert_figure(page, "head_version", listed[0]["head_version"])
    rows = {row[0]: row for row in await table_rows(page, "instances")}
    assert set(rows) == set(INSTANCES)
    assert rows["onprem-1"][2] == "In sync"
    assert rows["onprem-1"][3].endswith("(newest)")
    assert rows["cloud-1"][2] == "Rejected"
    assert "behind" in rows["cloud-1"][3]
    assert rows["cloud-1"][-1] == REJECT_ERROR
    assert rows["onprem-1"][6] == "60"
    assert rows["cloud-1"][6] == "25"


VIEW_CHECKS = {
    "cost": check_cost,
    "usage": check_usage,
    "compliance": check_compliance,
    "quality": check_quality,
    "instances": check_instances,
}


async def check_team_filter(api: Api, page: Page) -> None:
    await open_view(page, "overview")
    before = await page.get_attribute("#view", "data-rendered-at")
    await page.select_option('#filters select[name="team"]', "research")
    await wait_for_render(page, "overview", before)
    filtered = await api_report(api, "overview", team="research")
    assert filtered["usage"]["requests"] == TEAM_REQUESTS["research"]
    await check_overview_totals(page, filtered)
    assert "team=research" in page.url
    await screenshot(page, "overview-team-research")

    # The filter stays on when moving to another view.
    await open_view(page, "cost")
    assert await page.input_value('#filters select[name="team"]') == "research"
    cost = (await api_report(api, "usage", team="research"))["totals"]
    await assert_figure(page, "cost_usd", cost["cost_usd"])
    unfiltered = (await api_report(api, "usage"))["totals"]
    assert cost["cost_usd"] != unfiltered["cost_usd"]

    # Clearing the filter brings the full totals back.
    before = await page.get_attribute("#view", "data-rendered-at")
    await page.select_option('#filters select[name="team"]', "")
    await wait_for_render(page, "cost", before)
    await assert_figure(page, "requests", TOTAL_REQUESTS)


async def check_overview_totals(page: Page, overview: dict[str, Any]) -> None:
    await assert_figure(page, "requests", overview["usage"]["requests"])
    await assert_figure(page, "cost_usd", overview["usage"]["cost_usd"])
    await assert_figure(page, "error_rate", overview["quality"]["error_rate"])
    await assert_figure(
        page, "requests_with_detections", overview["compliance"]["requests_with_detections"]
    )


async def check_live_refresh(api: Api, page: Page, onprem: dict[str, Any]) -> None:
    await open_view(page, "overview")
    await page.select_option("#live", "5")
    assert "live=5" in page.url
    await ship(api, onprem, late_events(3))
    # No click: the next refresh, at most 5 s away, must show the new requests.
    await page.wait_for_function(
        """(expected) => {
            const card = document.querySelector('#view .kpi[data-metric="requests"]');
            return card !== null && card.dataset.value === expected;
        }""",
        arg=str(TOTAL_REQUESTS + 3),
        timeout=12000,
    )
    overview = await api_report(api, "overview")
    assert overview["usage"]["requests"] == TOTAL_REQUESTS + 3
    await check_overview_totals(page, overview)


def minute_input(epoch_s: float) -> str:
    """Format a time as a datetime-local input value in UTC, such as 2026-08-01T10:04."""
    return utc_timestamp(epoch_s)[:16]


async def check_custom_range(page: Page) -> None:
    await page.select_option("#live", "0")
    before = await page.get_attribute("#view", "data-rendered-at")
    await page.select_option('#filters select[name="range"]', "custom")
    await wait_for_render(page, "overview", before)
    assert await page.is_visible('#filters input[name="from"]')

    # Two days ago: no events, so the view explains that instead of showing zeros alone.
    now = time.time()
    before = await page.get_attribute("#view", "data-rendered-at")
    await page.fill('#filters input[name="to"]', minute_input(now - 2 * 86400))
    await wait_for_render(page, "overview", before)
    before = await page.get_attribute("#view", "data-rendered-at")
    await page.fill('#filters input[name="from"]', minute_input(now - 3 * 86400))
    await wait_for_render(page, "overview", before)
    await assert_figure(page, "requests", 0)
    assert "No usage events match" in await page.inner_text("#view .banner")

    # The last two hours, to the next minute: every event.
    before = await page.get_attribute("#view", "data-rendered-at")
    await page.fill('#filters input[name="to"]', minute_input(now + 120))
    await wait_for_render(page, "overview", before)
    before = await page.get_attribute("#view", "data-rendered-at")
    await page.fill('#filters input[name="from"]', minute_input(now - 2 * 3600))
    await wait_for_render(page, "overview", before)
    await assert_figure(page, "requests", TOTAL_REQUESTS + 3)
    assert "range=custom" in page.url


async def check_session_storage(page: Page) -> None:
    cookies = await page.context.cookies()
    assert len(cookies) == 1
    assert cookies[0]["httpOnly"] is True
    assert cookies[0]["sameSite"] == "Strict"
    assert ADMIN_TOKEN not in cookies[0]["value"]
    assert await page.evaluate("document.cookie") == ""
    assert await page.evaluate("window.localStorage.length") == 0
    assert await page.evaluate("window.sessionStorage.length") == 0
    assert ADMIN_TOKEN not in page.url
