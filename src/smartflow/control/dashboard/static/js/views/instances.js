// Instances: every enrolled gateway instance, its configuration sync state and its traffic.

import { formatAgo, formatInt, formatPercent, formatTime, formatUsd } from "../format.js";
import { card, h, kpiGrid, table, viewHeader } from "../widgets.js";
import { SYNC_STATES, syncBadge, syncSummary } from "./shared.js";

function versionText(item) {
  if (item.applied_version === null || item.applied_version === undefined) return "none yet";
  const behind = item.head_version - item.applied_version;
  return behind > 0
    ? `${item.applied_version} (${behind} behind ${item.head_version})`
    : `${item.applied_version} (newest)`;
}

function lastSeen(item) {
  if (!item.last_seen) return h("span", { className: "none" }, "never");
  return h("span", { title: formatTime(item.last_seen) }, formatAgo(item.last_seen));
}

function legend() {
  return h(
    "dl",
    { className: "legend" },
    Object.values(SYNC_STATES).map(([label, , meaning]) => [
      h("dt", {}, label),
      h("dd", {}, meaning),
    ]),
  );
}

export async function renderInstances(context) {
  const [instances, usage, quality] = await Promise.all([
    context.instances(),
    context.usage({ group_by: "instance" }),
    context.quality({ group_by: "instance" }),
  ]);
  const usageByName = new Map(usage.rows.map((row) => [row.group.instance, row]));
  const qualityByName = new Map(quality.rows.map((row) => [row.group.instance, row]));
  // The sync state belongs to the instance, so only the site and instance filters apply.
  const items = instances.items.filter(
    (item) =>
      (!context.filters.site || item.site === context.filters.site) &&
      (!context.filters.instance || item.name === context.filters.instance),
  );
  const sync = syncSummary(items);
  const head = instances.items.length ? instances.items[0].head_version : null;

  const rows = items.map((item) => ({
    item,
    usage: usageByName.get(item.name),
    quality: qualityByName.get(item.name),
  }));
  const columns = [
    { label: "Instance", value: (row) => row.item.name },
    { label: "Site", value: (row) => row.item.site },
    { label: "State", value: (row) => row.item.sync_state, format: (state) => syncBadge(state) },
    {
      label: "Applied version",
      value: (row) => versionText(row.item),
      help: "The configuration snapshot version the instance runs, against the newest one.",
    },
    {
      label: "Connected",
      value: (row) => (row.item.connected ? "yes" : "no"),
      help: "Whether the instance has an open sync stream to this control-plane process.",
    },
    { label: "Last seen", value: (row) => row.item, format: lastSeen },
    {
      label: "Requests",
      num: true,
      value: (row) => row.usage?.requests ?? 0,
      format: formatInt,
      help: "Requests in the selected window and filters.",
    },
    { label: "Cost", num: true, value: (row) => row.usage?.cost_usd ?? "0", format: formatUsd },
    {
      label: "Error rate",
      num: true,
      value: (row) => row.quality?.error_rate ?? null,
      format: formatPercent,
    },
    {
      label: "Last error",
      value: (row) => row.item.last_error,
      format: (text) => (text ? h("span", { className: "error-text" }, text) : ""),
      blank: "none",
    },
  ];

  return h(
    "div",
    {},
    viewHeader(
      "Instances",
      "Every enrolled gateway instance, the configuration version it applied from the " +
        "control plane, and its traffic in the selected window. The team and model " +
        "filters apply to the traffic columns only.",
    ),
    kpiGrid([
      {
        metric: "instances",
        label: "Instances",
        value: items.length,
        text: formatInt(items.length),
        help: "Enrolled instances matching the site and instance filters.",
      },
      {
        metric: "instances_in_sync",
        label: "In sync",
        value: sync.inSync,
        text: formatInt(sync.inSync),
        tone: items.length && sync.inSync === items.length ? "good" : "",
        help: "Running the newest configuration version.",
      },
      {
        metric: "instances_with_problems",
        label: "Need attention",
        value: sync.problems,
        text: formatInt(sync.problems),
        tone: sync.problems ? "bad" : "",
        help: "Disconnected, or rejected the newest version.",
      },
      {
        metric: "head_version",
        label: "Newest version",
        value: head,
        text: head === null ? "—" : String(head),
        help: "The newest configuration snapshot on the control plane.",
      },
    ]),
    h(
      "div",
      { className: "grid" },
      card({
        title: "Instances and sync state",
        wide: true,
        body: table(columns, rows, {
          empty: "No instance is enrolled. Create an enrollment token with " +
            "POST /v1/enrollment-tokens, then start an instance with it.",
          testid: "instances",
        }),
      }),
      card({ title: "What the states mean", wide: true, body: legend() }),
    ),
  );
}
