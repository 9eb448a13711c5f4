// Cost: what the traffic cost, over time and by model, team, key and instance.

import { DASH, formatInt, formatPercent, formatUsd, formatUsdTick, plural } from "../format.js";
import {
  banner, card, chartBox, emptyState, h, kpiGrid, seriesByGroup, stackedBars, table, viewHeader,
} from "../widgets.js";
import { exportLink, noEventsText } from "./shared.js";

function share(part, total) {
  const whole = Number(total);
  return whole > 0 ? Number(part) / whole : null;
}

function costColumns(dimension, label, totalCost) {
  return [
    { label, value: (row) => row.group[dimension], blank: "(none)" },
    { label: "Requests", num: true, value: (row) => row.requests, format: formatInt },
    {
      label: "Input tokens",
      num: true,
      value: (row) => row.tokens.input,
      format: formatInt,
      help: "Includes cached input tokens.",
    },
    {
      label: "Output tokens",
      num: true,
      value: (row) => row.tokens.output,
      format: formatInt,
      help: "Includes reasoning tokens.",
    },
    {
      label: "Cost",
      num: true,
      value: (row) => row.cost_usd,
      format: (cost, row) => {
        if (row.requests > 0 && row.unpriced_requests === row.requests) return "not priced";
        return formatUsd(cost);
      },
    },
    {
      label: "Share of cost",
      num: true,
      value: (row) => share(row.cost_usd, totalCost),
      format: formatPercent,
    },
    {
      label: "Unpriced requests",
      num: true,
      value: (row) => row.unpriced_requests,
      format: formatInt,
      help: "Requests of a model missing from the price catalogue; not in the cost.",
    },
  ];
}

function byCost(response) {
  return [...response.rows].sort((a, b) => Number(b.cost_usd) - Number(a.cost_usd));
}

export async function renderCost(context) {
  const [overTime, byModel, byTeam, byKey, byInstance] = await Promise.all([
    context.usage({ bucket: context.bucket, group_by: "model" }),
    context.usage({ group_by: "model" }),
    context.usage({ group_by: "team" }),
    context.usage({ group_by: "key" }),
    context.usage({ group_by: "site,instance" }),
  ]);
  const totals = byModel.totals;
  const perRequest = totals.requests ? Number(totals.cost_usd) / totals.requests : null;

  const parts = [
    viewHeader(
      "Cost",
      "Provider cost of the traffic in US dollars. Each instance prices every request from " +
        "its price catalogue: input, output, cached input and reasoning tokens at their own " +
        "rates, plus per-request fees. Cached and reasoning tokens are never counted twice.",
    ),
  ];
  if (!totals.requests) parts.push(banner(noEventsText()));
  if (totals.unpriced_requests > 0) {
    parts.push(
      banner(
        `${plural(totals.unpriced_requests, "request")} used a model that is missing from ` +
          "the price catalogue, so their cost is not included. Admins add the model's prices " +
          "with PUT /v1/price-catalog.",
        "warn",
      ),
    );
  }
  parts.push(
    kpiGrid([
      {
        metric: "cost_usd",
        label: "Total cost",
        value: totals.cost_usd,
        text: formatUsd(totals.cost_usd),
        help: "All priced requests in the window.",
      },
      {
        metric: "cost_per_request",
        label: "Cost per request",
        value: perRequest,
        text: perRequest === null ? DASH : formatUsd(perRequest),
        help: "Total cost divided by all requests, unpriced ones included.",
      },
      {
        metric: "requests",
        label: "Requests",
        value: totals.requests,
        text: formatInt(totals.requests),
        help: "Requests in the window, errors included.",
      },
      {
        metric: "unpriced_requests",
        label: "Unpriced requests",
        value: totals.unpriced_requests,
        text: formatInt(totals.unpriced_requests),
        tone: totals.unpriced_requests > 0 ? "warn" : "",
        help: "Requests with tokens but no price in the catalogue.",
      },
    ]),
  );

  const chart = Number(totals.cost_usd) > 0
    ? chartBox(
      stackedBars(seriesByGroup(overTime, "model", (row) => Number(row.cost_usd)), {
        yTitle: "US dollars",
        tickFormat: formatUsdTick,
        tooltipFormat: formatUsd,
      }),
      { label: "Cost per time bucket, stacked by requested model" },
    )
    : emptyState("No priced requests in this window.");

  const teamChart = byTeam.rows.some((row) => Number(row.cost_usd) > 0)
    ? chartBox(
      {
        type: "bar",
        data: {
          labels: byCost(byTeam).map((row) => row.group.team ?? "(no team)"),
          datasets: [{
            label: "Cost",
            data: byCost(byTeam).map((row) => Number(row.cost_usd)),
            backgroundColor: "#0072B2",
          }],
        },
        options: {
          indexAxis: "y",
          scales: { x: { beginAtZero: true, ticks: { callback: formatUsdTick } } },
          plugins: {
            legend: { display: false },
            tooltip: { callbacks: { label: (item) => formatUsd(item.raw) } },
          },
        },
      },
      { short: true, label: "Cost by team" },
    )
    : emptyState("No priced requests in this window.");

  parts.push(
    h(
      "div",
      { className: "grid" },
      card({
        title: `Cost per ${context.bucket}, by model`,
        help: "Stacked by the model name the caller requested; time buckets are UTC.",
        body: chart,
        wide: true,
      }),
      card({
        title: "Cost by model",
        help: "The model name the caller requested, most expensive first.",
        actions: exportLink(context, "usage", { group_by: "model" }),
        body: table(costColumns("model", "Model", totals.cost_usd), byCost(byModel), {
          testid: "cost-by-model",
        }),
        wide: true,
      }),
      card({
        title: "Cost by team",
        help: "Teams come from the virtual key that made the request.",
        body: teamChart,
      }),
      card({
        title: "Cost by virtual key",
        help: "The gateway key each application uses.",
        actions: exportLink(context, "usage", { group_by: "key" }),
        body: table(
          [
            { label: "Key", value: (row) => row.group.key, blank: "(none)" },
            { label: "Requests", num: true, value: (row) => row.requests, format: formatInt },
            { label: "Cost", num: true, value: (row) => row.cost_usd, format: formatUsd },
          ],
          byCost(byKey),
        ),
      }),
      card({
        title: "Cost by instance",
        help: "The gateway instance and site that served the requests.",
        actions: exportLink(context, "usage", { group_by: "site,instance" }),
        body: table(
          [
            { label: "Site", value: (row) => row.group.site },
            { label: "Instance", value: (row) => row.group.instance },
            { label: "Requests", num: true, value: (row) => row.requests, format: formatInt },
            { label: "Cost", num: true, value: (row) => row.cost_usd, format: formatUsd },
            {
              label: "Share of cost",
              num: true,
              value: (row) => share(row.cost_usd, totals.cost_usd),
              format: formatPercent,
            },
          ],
          byCost(byInstance),
        ),
        wide: true,
      }),
    ),
  );
  return h("div", {}, parts);
}
