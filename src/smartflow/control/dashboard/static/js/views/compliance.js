// Compliance: what the policies detected, redacted, blocked and routed, by team and over time.

import { formatInt, formatPercent } from "../format.js";
import {
  PALETTE, banner, card, chartBox, dataset, doughnut, emptyState, h, isEmptyMap, kpiGrid, lines,
  mapBars, onlySeries, seriesByGroup, sumMap, table, viewHeader,
} from "../widgets.js";
import { exportLink, noEventsText } from "./shared.js";

function mapRows(map) {
  return Object.entries(map || {})
    .filter(([, count]) => count > 0)
    .sort((a, b) => b[1] - a[1])
    .map(([name, count]) => ({ name, count }));
}

function overTimeChart(response) {
  const detections = seriesByGroup(response, null, (row) => row.requests_with_detections);
  const blocked = seriesByGroup(response, null, (row) => row.blocked_requests);
  const routed = seriesByGroup(response, null, (row) => row.residency_routes);
  return lines(
    {
      labels: detections.labels,
      datasets: [
        dataset("Requests with findings", onlySeries(detections), PALETTE[0]),
        dataset("Blocked requests", onlySeries(blocked), PALETTE[5]),
        dataset("Residency-routed requests", onlySeries(routed), PALETTE[2]),
      ],
    },
    { yTitle: "requests", tooltipFormat: formatInt },
  );
}

export async function renderCompliance(context) {
  const [overTime, byTeam] = await Promise.all([
    context.compliance({ bucket: context.bucket }),
    context.compliance({ group_by: "team" }),
  ]);
  const totals = byTeam.totals;
  const detectionRate = totals.requests ? totals.requests_with_detections / totals.requests : null;

  const parts = [
    viewHeader(
      "Compliance",
      "What the policies found and did. Findings are counts per entity type (such as EMAIL " +
        "or IBAN); the values themselves never leave the instance. A request can contain " +
        "several findings and be acted on for several entity types.",
    ),
  ];
  if (!totals.requests) parts.push(banner(noEventsText()));
  parts.push(
    kpiGrid([
      {
        metric: "requests_with_detections",
        label: "Requests with findings",
        value: totals.requests_with_detections,
        text: formatInt(totals.requests_with_detections),
        help: `${formatPercent(detectionRate)} of ${formatInt(totals.requests)} requests.`,
      },
      {
        metric: "detections_total",
        label: "Findings",
        value: sumMap(totals.detections),
        text: formatInt(sumMap(totals.detections)),
        help: "Entities detected in requests and responses.",
      },
      {
        metric: "redactions_total",
        label: "Redacted findings",
        value: sumMap(totals.redactions),
        text: formatInt(sumMap(totals.redactions)),
        help: "Findings removed, masked or tokenized before the provider saw them.",
      },
      {
        metric: "blocked_requests",
        label: "Blocked requests",
        value: totals.blocked_requests,
        text: formatInt(totals.blocked_requests),
        tone: totals.blocked_requests > 0 ? "warn" : "",
        help: "Rejected by a policy before reaching a provider.",
      },
      {
        metric: "residency_routes",
        label: "Residency-routed",
        value: totals.residency_routes,
        text: formatInt(totals.residency_routes),
        help: "Requests kept on allowed sites or providers by a data-residency rule.",
      },
      {
        metric: "audit_only_requests",
        label: "Audit-only matches",
        value: totals.audit_only_requests,
        text: formatInt(totals.audit_only_requests),
        help: "Requests checked by a policy in audit mode, which records and never acts.",
      },
    ]),
  );

  const anyActivity = totals.requests_with_detections || totals.blocked_requests ||
    totals.residency_routes;
  parts.push(
    h(
      "div",
      { className: "grid" },
      card({
        title: `Policy activity per ${context.bucket}`,
        help: "Requests with findings, blocked requests and residency-routed requests per " +
          "time bucket (UTC).",
        body: anyActivity
          ? chartBox(overTimeChart(overTime), { label: "Policy activity over time" })
          : emptyState("No policy activity in this window."),
        wide: true,
      }),
      card({
        title: "Findings by entity type",
        help: "Detected in requests and responses; the response part is in the table below.",
        body: isEmptyMap(totals.detections)
          ? emptyState("No findings in this window.")
          : chartBox(mapBars(totals.detections, { label: "findings" }), {
            short: true,
            label: "Findings by entity type",
          }),
      }),
      card({
        title: "Actions taken",
        help: "Requests per action; a request counts once per entity type acted on.",
        body: isEmptyMap(totals.actions)
          ? emptyState("No policy action in this window.")
          : chartBox(doughnut(totals.actions), { short: true, label: "Actions taken" }),
      }),
      card({
        title: "Blocks by rule",
        help: "Blocked requests per policy and rule (or entity type) that blocked them.",
        body: table(
          [
            { label: "Policy / rule", value: (row) => row.name },
            { label: "Blocked requests", num: true, value: (row) => row.count, format: formatInt },
          ],
          mapRows(totals.blocks),
          { empty: "No request was blocked in this window." },
        ),
      }),
      card({
        title: "Findings and redactions by entity type",
        body: table(
          [
            { label: "Entity type", value: (row) => row.name },
            { label: "Findings", num: true, value: (row) => row.count, format: formatInt },
            {
              label: "in responses",
              num: true,
              value: (row) => (totals.response_detections || {})[row.name] || 0,
              format: formatInt,
            },
            {
              label: "Redacted",
              num: true,
              value: (row) => (totals.redactions || {})[row.name] || 0,
              format: formatInt,
            },
          ],
          mapRows(totals.detections),
          { empty: "No findings in this window." },
        ),
      }),
      card({
        title: "Content rules and residency rules",
        help: "Content rules that fired (once per request), and residency rules that " +
          "narrowed routing, as label:policy.",
        body: table(
          [
            { label: "Rule", value: (row) => row.name },
            { label: "Kind", value: (row) => row.kind },
            { label: "Requests", num: true, value: (row) => row.count, format: formatInt },
          ],
          [
            ...mapRows(totals.rules_fired).map((row) => ({ ...row, kind: "content rule" })),
            ...mapRows(totals.residency_rules).map((row) => ({ ...row, kind: "residency" })),
          ],
          { empty: "No content or residency rule fired in this window." },
        ),
      }),
      card({
        title: "By team",
        actions: exportLink(context, "compliance", { group_by: "team" }),
        body: table(
          [
            { label: "Team", value: (row) => row.group.team, blank: "(none)" },
            { label: "Requests", num: true, value: (row) => row.requests, format: formatInt },
            {
              label: "With findings",
              num: true,
              value: (row) => row.requests_with_detections,
              format: formatInt,
            },
            {
              label: "Findings",
              num: true,
              value: (row) => sumMap(row.detections),
              format: formatInt,
            },
            {
              label: "Redacted",
              num: true,
              value: (row) => sumMap(row.redactions),
              format: formatInt,
            },
            {
              label: "Blocked",
              num: true,
              value: (row) => row.blocked_requests,
              format: formatInt,
            },
            {
              label: "Residency-routed",
              num: true,
              value: (row) => row.residency_routes,
              format: formatInt,
            },
          ],
          [...byTeam.rows].sort((a, b) => b.requests_with_detections - a.requests_with_detections),
          { testid: "compliance-by-team" },
        ),
        wide: true,
      }),
    ),
  );
  return h("div", {}, parts);
}
