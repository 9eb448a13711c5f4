// Overview: the headline figures of every concern, traffic over time and instance health.

import {
  DASH, formatAgo, formatCompact, formatInt, formatMs, formatPercent, formatTime, formatUsd,
  formatUsdTick, plural,
} from "../format.js";
import {
  banner, card, chartBox, emptyState, h, kpiGrid, seriesByGroup, stackedBars, viewHeader,
} from "../widgets.js";
import { errorRateTone, noEventsText, syncSummary } from "./shared.js";

export async function renderOverview(context) {
  const [overview, bySite, instances] = await Promise.all([
    context.overview(),
    context.usage({ bucket: context.bucket, group_by: "site" }),
    context.instances(),
  ]);
  const usage = overview.usage;
  const quality = overview.quality;
  const compliance = overview.compliance;
  const sync = syncSummary(instances.items);

  const figures = kpiGrid([
    {
      metric: "requests",
      label: "Requests",
      value: usage.requests,
      text: formatInt(usage.requests),
      help: "Requests the gateway instances served in the window, errors included.",
    },
    {
      metric: "cost_usd",
      label: "Cost",
      value: usage.cost_usd,
      text: formatUsd(usage.cost_usd),
      help: "Provider cost in US dollars, priced by each instance from its price catalogue.",
    },
    {
      metric: "tokens_total",
      label: "Tokens",
      value: usage.tokens.total,
      text: formatCompact(usage.tokens.total),
      help: `${formatInt(usage.tokens.input)} input and ${formatInt(usage.tokens.output)} ` +
        "output tokens.",
    },
    {
      metric: "error_rate",
      label: "Error rate",
      value: quality.error_rate,
      text: formatPercent(quality.error_rate),
      tone: errorRateTone(quality.error_rate),
      help: `${plural(quality.errors, "request")} got an HTTP error response (4xx or 5xx); ` +
        "client disconnects are not counted.",
    },
    {
      metric: "latency_p95",
      label: "Latency p95",
      value: quality.latency_ms ? quality.latency_ms.p95 : null,
      text: formatMs(quality.latency_ms ? quality.latency_ms.p95 : null),
      help: "95% of requests completed within this time, from receipt to the last byte.",
    },
    {
      metric: "cache_hit_rate",
      label: "Cache hit rate",
      value: quality.cache_hit_rate,
      text: formatPercent(quality.cache_hit_rate),
      help: "Share of cache lookups served from the response cache.",
    },
    {
      metric: "requests_with_detections",
      label: "Requests with findings",
      value: compliance.requests_with_detections,
      text: formatInt(compliance.requests_with_detections),
      help: "Requests in which a policy detected personal data or secrets (counts only).",
    },
    {
      metric: "blocked_requests",
      label: "Blocked requests",
      value: compliance.blocked_requests,
      text: formatInt(compliance.blocked_requests),
      tone: compliance.blocked_requests > 0 ? "warn" : "",
      help: "Requests a policy rejected before they reached a provider.",
    },
    {
      metric: "instances_in_sync",
      label: "Instances in sync",
      value: sync.inSync,
      text: instances.items.length ? `${sync.inSync} of ${instances.items.length}` : DASH,
      tone: sync.problems > 0 ? "bad" : "",
      help: instances.items.length
        ? "Instances running the newest configuration version."
        : "No instance is enrolled yet.",
    },
  ]);

  const parts = [
    viewHeader(
      "Overview",
      "All AI traffic through every Smartflow instance in the selected window: what it " +
        "cost, how much was used, what the policies caught and how well providers served. " +
        "Each figure's note says what it counts; the other views break them down.",
    ),
  ];
  if (!usage.requests) parts.push(banner(noEventsText()));
  parts.push(figures);
  parts.push(
    h(
      "p",
      { className: "muted small" },
      overview.last_event_at
        ? `Newest event in the window: ${formatTime(overview.last_event_at)} ` +
          `(${formatAgo(overview.last_event_at)}).`
        : "No event in the window.",
    ),
  );

  const requestsChart = usage.requests
    ? chartBox(
      stackedBars(seriesByGroup(bySite, "site", (row) => row.requests), {
        yTitle: "requests",
        tooltipFormat: formatInt,
      }),
      { label: "Requests per time bucket, stacked by site" },
    )
    : emptyState("No requests in this window.");
  const costChart = Number(usage.cost_usd) > 0
    ? chartBox(
      stackedBars(seriesByGroup(bySite, "site", (row) => Number(row.cost_usd)), {
        yTitle: "US dollars",
        tickFormat: formatUsdTick,
        tooltipFormat: formatUsd,
      }),
      { label: "Cost per time bucket, by site" },
    )
    : emptyState("No priced requests in this window.");

  parts.push(
    h(
      "div",
      { className: "grid" },
      card({
        title: `Requests per ${context.bucket}, by site`,
        help: "Each bar is one time bucket (UTC); colours are the sites the instances run in.",
        body: requestsChart,
      }),
      card({
        title: `Cost per ${context.bucket}, by site`,
        help: "Provider cost in US dollars per time bucket (UTC).",
        body: costChart,
      }),
    ),
  );
  return h("div", {}, parts);
}
