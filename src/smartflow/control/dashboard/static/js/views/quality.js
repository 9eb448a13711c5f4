// Quality: errors, latency, time to first token, fallbacks, cache, finish reasons, feedback.

import { formatInt, formatMs, formatPercent, formatScore } from "../format.js";
import {
  PALETTE, banner, bucketLabels, bucketStarts, card, chartBox, dataset, doughnut, emptyState, h,
  isEmptyMap, kpiGrid, lines, mapBars, onlySeries, seriesByGroup, table, viewHeader,
} from "../widgets.js";
import { errorRateTone, exportLink, noEventsText } from "./shared.js";

const FINISH_ORDER = ["stop", "tool_calls", "length", "content_filter", "refusal", "error"];

function latencyChart(response) {
  // A bucket without requests (or without streams, for TTFT) has no value, so it is a
  // gap in the line, not a zero.
  const percentile = (key, field) =>
    onlySeries(
      seriesByGroup(response, null, (row) => (row[key] ? row[key][field] : null), {
        empty: null,
      }),
    );
  return lines(
    {
      labels: bucketLabels(response.window, bucketStarts(response.window)),
      datasets: [
        dataset("Latency p50", percentile("latency_ms", "p50"), PALETTE[0]),
        dataset("Latency p95", percentile("latency_ms", "p95"), PALETTE[5]),
        dataset("Time to first token p95", percentile("ttft_ms", "p95"), PALETTE[2], {
          borderDash: [5, 4],
        }),
      ],
    },
    { yTitle: "milliseconds", tickFormat: (value) => formatMs(value), tooltipFormat: formatMs },
  );
}

function errorRateChart(response) {
  const requests = onlySeries(seriesByGroup(response, null, (row) => row.requests));
  const errors = seriesByGroup(response, null, (row) => row.errors);
  const rates = onlySeries(errors).map((count, i) => (requests[i] ? count / requests[i] : null));
  return lines(
    { labels: errors.labels, datasets: [dataset("Error rate", rates, PALETTE[5])] },
    {
      yTitle: "share of requests",
      tickFormat: (value) => formatPercent(value),
      tooltipFormat: formatPercent,
    },
  );
}

function qualityColumns(dimension, label) {
  return [
    { label, value: (row) => row.group[dimension], blank: "(none)" },
    { label: "Requests", num: true, value: (row) => row.requests, format: formatInt },
    { label: "Error rate", num: true, value: (row) => row.error_rate, format: formatPercent },
    { label: "Latency p50", num: true, value: (row) => row.latency_ms?.p50, format: formatMs },
    { label: "Latency p95", num: true, value: (row) => row.latency_ms?.p95, format: formatMs },
    {
      label: "TTFT p95",
      num: true,
      value: (row) => row.ttft_ms?.p95,
      format: formatMs,
      help: "Time to first token of streamed requests.",
    },
    { label: "Fallback rate", num: true, value: (row) => row.fallback_rate, format: formatPercent },
    {
      label: "Cache hit rate",
      num: true,
      value: (row) => row.cache_hit_rate,
      format: formatPercent,
    },
    {
      label: "Truncated",
      num: true,
      value: (row) => row.truncation_rate,
      format: formatPercent,
      help: "Responses cut by the output token limit (finish reason length).",
    },
    {
      label: "Feedback",
      num: true,
      value: (row) => row.feedback?.mean_score,
      format: formatScore,
      help: "Mean feedback score, 0 (bad) to 1 (good).",
    },
  ];
}

export async function renderQuality(context) {
  const [overTime, byProvider, byModel] = await Promise.all([
    context.quality({ bucket: context.bucket }),
    context.quality({ group_by: "provider" }),
    context.quality({ group_by: "model" }),
  ]);
  const totals = byProvider.totals;
  const latency = totals.latency_ms || {};
  const ttft = totals.ttft_ms || {};
  const feedback = totals.feedback || {};

  const parts = [
    viewHeader(
      "Quality",
      "How well the providers and the gateway served the requests. Latency runs from the " +
        "gateway receiving a request to its last byte; time to first token (TTFT) is for " +
        "streamed requests. p50 and p95 mean half and 95% of requests were at least as fast.",
    ),
  ];
  if (!totals.requests) parts.push(banner(noEventsText()));
  parts.push(
    kpiGrid([
      {
        metric: "error_rate",
        label: "Error rate",
        value: totals.error_rate,
        text: formatPercent(totals.error_rate),
        tone: errorRateTone(totals.error_rate),
        help: `${formatInt(totals.errors)} errors, ${formatInt(totals.upstream_errors)} of ` +
          "them from providers or the gateway (5xx).",
      },
      {
        metric: "latency_p50",
        label: "Latency p50",
        value: latency.p50 ?? null,
        text: formatMs(latency.p50),
        help: "Half of the requests were faster than this.",
      },
      {
        metric: "latency_p95",
        label: "Latency p95",
        value: latency.p95 ?? null,
        text: formatMs(latency.p95),
        help: `Slowest request: ${formatMs(latency.max)}.`,
      },
      {
        metric: "ttft_p95",
        label: "Time to first token p95",
        value: ttft.p95 ?? null,
        text: formatMs(ttft.p95),
        help: `Over ${formatInt(totals.streams)} streamed requests.`,
      },
      {
        metric: "fallback_rate",
        label: "Fallback rate",
        value: totals.fallback_rate,
        text: formatPercent(totals.fallback_rate),
        help: "Requests that moved on to another deployment after a failure.",
      },
      {
        metric: "cache_hit_rate",
        label: "Cache hit rate",
        value: totals.cache_hit_rate,
        text: formatPercent(totals.cache_hit_rate),
        help: "Hits among cache lookups (hits plus misses).",
      },
      {
        metric: "truncation_rate",
        label: "Truncation rate",
        value: totals.truncation_rate,
        text: formatPercent(totals.truncation_rate),
        help: "Responses cut by the output token limit (finish reason length).",
      },
      {
        metric: "feedback_mean",
        label: "Feedback score",
        value: feedback.mean_score ?? null,
        text: formatScore(feedback.mean_score),
        help: feedback.count
          ? `Mean of ${formatInt(feedback.count)} scores from 0 (bad) to 1 (good).`
          : "No feedback yet; applications send it to POST /v1/feedback on the instance.",
      },
    ]),
  );

  parts.push(
    h(
      "div",
      { className: "grid" },
      card({
        title: `Latency per ${context.bucket}`,
        help: "Percentiles per time bucket (UTC); gaps are buckets without requests.",
        body: latency.p50 !== undefined
          ? chartBox(latencyChart(overTime), { label: "Latency percentiles over time" })
          : emptyState("No requests with a latency in this window."),
      }),
      card({
        title: `Error rate per ${context.bucket}`,
        help: "Requests whose response was an HTTP error, as a share of the bucket's requests.",
        body: totals.requests
          ? chartBox(errorRateChart(overTime), { label: "Error rate over time" })
          : emptyState("No requests in this window."),
      }),
      card({
        title: "Finish reasons",
        help: "Why the model stopped: stop means it finished its response, length means the " +
          "token limit cut it, and tool_calls means the model requested a tool call.",
        body: isEmptyMap(totals.finish_reasons)
          ? emptyState("No finished responses in this window.")
          : chartBox(doughnut(totals.finish_reasons, { order: FINISH_ORDER }), {
            short: true,
            label: "Finish reasons",
          }),
      }),
      card({
        title: "Error types",
        help: "The gateway's error code of each failed request, client disconnects included.",
        body: isEmptyMap(totals.error_types)
          ? emptyState("No failed requests in this window.")
          : chartBox(mapBars(totals.error_types, { label: "requests" }), {
            short: true,
            label: "Error types",
          }),
      }),
      card({
        title: "By provider",
        actions: exportLink(context, "quality", { group_by: "provider" }),
        help: "The configured provider that served the request (the last one tried).",
        body: table(qualityColumns("provider", "Provider"), byProvider.rows, {
          testid: "quality-by-provider",
        }),
        wide: true,
      }),
      card({
        title: "By requested model",
        actions: exportLink(context, "quality", { group_by: "model" }),
        body: table(qualityColumns("model", "Model"), byModel.rows),
        wide: true,
      }),
    ),
  );
  return h("div", {}, parts);
}
