// Pieces several views share: the empty-window note, sync states and export links.

import { badge, h } from "../widgets.js";

export function noEventsText() {
  return "No usage events match this window and these filters. An instance records one " +
    "event per request when usage.enabled is true in its configuration, and ships the " +
    "events in batches when usage.shipping is set, so new traffic shows after a few " +
    "seconds. Try a longer time range or clear the filters.";
}

// Label, badge tone and meaning of each sync state.
export const SYNC_STATES = {
  in_sync: ["In sync", "good", "Applied the newest configuration version."],
  syncing: ["Syncing", "warn", "Connected, and applying a newer version."],
  enrolled: ["Enrolled", "neutral", "Enrolled, but has not connected yet."],
  rejected: [
    "Rejected",
    "bad",
    "Rejected the newest version and serves the last good one; see its last error.",
  ],
  disconnected: ["Disconnected", "bad", "Not connected; it serves its last applied version."],
};

export function syncBadge(state) {
  const [label, tone] = SYNC_STATES[state] || [state, "neutral"];
  return badge(label, tone);
}

export function syncSummary(items) {
  let inSync = 0;
  let problems = 0;
  for (const item of items) {
    if (item.sync_state === "in_sync") inSync += 1;
    if (item.sync_state === "rejected" || item.sync_state === "disconnected") problems += 1;
  }
  return { inSync, problems };
}

// Colour an error rate: above 5% is bad, above 1% needs a look.
export function errorRateTone(rate) {
  if (rate > 0.05) return "bad";
  if (rate > 0.01) return "warn";
  return "";
}

export function exportLink(context, report, extra, text = "Download CSV") {
  return h(
    "a",
    { href: context.csvLink(report, extra), className: "export", download: `${report}.csv` },
    text,
  );
}
