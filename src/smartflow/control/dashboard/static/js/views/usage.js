// Usage: who sent how many requests and tokens, over time and by team, key, model and instance.

import { formatCompact, formatInt, formatUsd } from "../format.js";
import {
  PALETTE, banner, card, chartBox, dataset, emptyState, h, kpiGrid, onlySeries, seriesByGroup,
  stackedBars, table, viewHeader,
} from "../widgets.js";
import { exportLink, noEventsText } from "./shared.js";

function usageColumns(dimension, label) {
  return [
    { label, value: (row) => row.group[dimension], blank: "(none)" },
    { label: "Requests", num: true, value: (row) => row.requests, format: formatInt },
    { label: "Errors", num: true, value: (row) => row.errors, format: formatInt },
    { label: "Input tokens", num: true, value: (row) => row.tokens.input, format: formatInt },
    {
      label: "of which cached",
      num: true,
      value: (row) => row.tokens.cached_input,
      format: formatInt,
      help: "Input tokens served from the provider's prompt cache, priced at their own rate.",
    },
    { label: "Output tokens", num: true, value: (row) => row.tokens.output, format: formatInt },
    {
      label: "of which reasoning",
      num: true,
      value: (row) => row.tokens.reasoning,
      format: formatInt,
      help: "Output tokens the model spent reasoning before its response.",
    },
    { label: "Cost", num: true, value: (row) => row.cost_usd, format: formatUsd },
  ];
}

function byRequests(response) {
  return [...response.rows].sort((a, b) => b.requests - a.requests);
}

function tokenSeries(response) {
  const input = seriesByGroup(response, null, (row) => row.tokens.input - row.tokens.cached_input);
  const cached = seriesByGroup(response, null, (row) => row.tokens.cached_input);
  const output = seriesByGroup(response, null, (row) => row.tokens.output);
  const datasets = [
    dataset("Input, not from cache", onlySeries(input), PALETTE[0]),
    dataset("Input from prompt cache", onlySeries(cached), PALETTE[4]),
    dataset("Output", onlySeries(output), PALETTE[1]),
  ];
  return { labels: input.labels, datasets };
}

export async function renderUsage(context) {
  const [byInstanceOverTime, overTime, byTeam, byKey, byModel, byInstance] = await Promise.all([
    context.usage({ bucket: context.bucket, group_by: "instance" }),
    context.usage({ bucket: context.bucket }),
    context.usage({ group_by: "team" }),
    context.usage({ group_by: "key" }),
    context.usage({ group_by: "model" }),
    context.usage({ group_by: "site,instance" }),
  ]);
  const totals = overTime.totals;

  const parts = [
    viewHeader(
      "Usage",
      "Requests and tokens, by who sent them and where they ran. Input tokens include " +
        "cached input, and output tokens include reasoning, so the detail columns are " +
        "parts of the totals, not additions to them.",
    ),
  ];
  if (!totals.requests) parts.push(banner(noEventsText()));
  parts.push(
    kpiGrid([
      {
        metric: "requests",
        label: "Requests",
        value: totals.requests,
        text: formatInt(totals.requests),
        help: `${formatInt(totals.errors)} of them got an HTTP error response.`,
      },
      {
        metric: "tokens_input",
        label: "Input tokens",
        value: totals.tokens.input,
        text: formatCompact(totals.tokens.input),
        help: `${formatInt(totals.tokens.cached_input)} of them from the prompt cache.`,
      },
      {
        metric: "tokens_output",
        label: "Output tokens",
        value: totals.tokens.output,
        text: formatCompact(totals.tokens.output),
        help: `${formatInt(totals.tokens.reasoning)} of them reasoning.`,
      },
      {
        metric: "tokens_total",
        label: "All tokens",
        value: totals.tokens.total,
        text: formatCompact(totals.tokens.total),
        help: "Input plus output tokens.",
      },
    ]),
  );

  const requestChart = totals.requests
    ? chartBox(
      stackedBars(seriesByGroup(byInstanceOverTime, "instance", (row) => row.requests), {
        yTitle: "requests",
        tooltipFormat: formatInt,
      }),
      { label: "Requests per time bucket, stacked by instance" },
    )
    : emptyState("No requests in this window.");
  const tokenChart = totals.tokens.total
    ? chartBox(
      stackedBars(tokenSeries(overTime), {
        yTitle: "tokens",
        tickFormat: (value) => formatCompact(value),
        tooltipFormat: formatInt,
      }),
      { label: "Tokens per time bucket: input, cached input and output" },
    )
    : emptyState("No tokens in this window.");

  parts.push(
    h(
      "div",
      { className: "grid" },
      card({
        title: `Requests per ${context.bucket}, by instance`,
        help: "Each bar is one time bucket (UTC), split by the instance that served it.",
        body: requestChart,
      }),
      card({
        title: `Tokens per ${context.bucket}`,
        help: "Input tokens sent without a cache hit, input tokens read from the prompt " +
          "cache, and output tokens.",
        body: tokenChart,
      }),
      card({
        title: "By team",
        actions: exportLink(context, "usage", { group_by: "team" }),
        help: "Teams come from the virtual key that made the request.",
        body: table(usageColumns("team", "Team"), byRequests(byTeam), { testid: "usage-by-team" }),
        wide: true,
      }),
      card({
        title: "By virtual key",
        actions: exportLink(context, "usage", { group_by: "key" }),
        body: table(usageColumns("key", "Key"), byRequests(byKey)),
        wide: true,
      }),
      card({
        title: "By requested model",
        actions: exportLink(context, "usage", { group_by: "model" }),
        help: "The model name the caller sent; routing may serve it with another deployment.",
        body: table(usageColumns("model", "Model"), byRequests(byModel)),
        wide: true,
      }),
      card({
        title: "By instance",
        actions: exportLink(context, "usage", { group_by: "site,instance" }),
        body: table(
          [
            { label: "Site", value: (row) => row.group.site },
            ...usageColumns("instance", "Instance"),
          ],
          byRequests(byInstance),
        ),
        wide: true,
      }),
    ),
  );
  return h("div", {}, parts);
}
