// The dashboard's shell: the filter bar, the view router and the live refresh.
// View and filters live in the URL fragment (#/cost?range=24h&team=finance), so a view
// can be bookmarked and shared; the admin token never appears there.

import { getJson } from "./api.js";
import { formatTime } from "./format.js";
import { banner, destroyCharts, drawCharts, h } from "./widgets.js";
import { renderCompliance } from "./views/compliance.js";
import { renderCost } from "./views/cost.js";
import { renderInstances } from "./views/instances.js";
import { renderOverview } from "./views/overview.js";
import { renderQuality } from "./views/quality.js";
import { renderUsage } from "./views/usage.js";

const VIEWS = {
  overview: renderOverview,
  cost: renderCost,
  usage: renderUsage,
  compliance: renderCompliance,
  quality: renderQuality,
  instances: renderInstances,
};
const DIMENSIONS = ["site", "instance", "team", "model"];
const RANGES_MS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
const LIVE_DEFAULT_S = "15";

const form = document.getElementById("filters");
const viewRoot = document.getElementById("view");
const statusLine = document.getElementById("status");
const liveSelect = document.getElementById("live");

let renderSerial = 0;
let liveTimer = null;

// --- state in the URL fragment --------------------------------------------------------

function readLocation() {
  const [path, query] = window.location.hash.replace(/^#\/?/, "").split("?");
  const view = VIEWS[path] ? path : "overview";
  const params = new URLSearchParams(query || "");
  return { view, params };
}

function writeLocation(view, params) {
  const query = params.toString();
  const hash = `#/${view}${query ? `?${query}` : ""}`;
  if (window.location.hash !== hash) window.history.replaceState(null, "", hash);
  // Nav links carry the filters, so moving between views keeps them.
  for (const link of document.querySelectorAll(".sidebar nav a")) {
    link.setAttribute("href", `#/${link.dataset.view}${query ? `?${query}` : ""}`);
  }
}

function filterParams() {
  const params = new URLSearchParams();
  const range = form.elements.range.value;
  params.set("range", range);
  if (range === "custom") {
    if (form.elements.from.value) params.set("from", form.elements.from.value);
    if (form.elements.to.value) params.set("to", form.elements.to.value);
  }
  for (const name of DIMENSIONS) {
    const value = form.elements[name].value;
    if (value) params.set(name, value);
  }
  if (liveSelect.value !== LIVE_DEFAULT_S) params.set("live", liveSelect.value);
  return params;
}

function ensureOption(select, value) {
  if (value && ![...select.options].some((option) => option.value === value)) {
    select.append(h("option", { value }, value));
  }
}

function applyParams(params) {
  const range = params.get("range");
  form.elements.range.value = range && (RANGES_MS[range] || range === "custom") ? range : "24h";
  form.elements.from.value = params.get("from") || "";
  form.elements.to.value = params.get("to") || "";
  for (const name of DIMENSIONS) {
    const select = form.elements[name];
    ensureOption(select, params.get(name));
    select.value = params.get(name) || "";
  }
  const live = params.get("live");
  liveSelect.value = [...liveSelect.options].some((option) => option.value === live)
    ? live
    : LIVE_DEFAULT_S;
  showCustomRange();
  markActiveFilters();
}

function showCustomRange() {
  const custom = form.elements.range.value === "custom";
  for (const label of form.querySelectorAll(".custom-range")) label.hidden = !custom;
}

function markActiveFilters() {
  for (const name of DIMENSIONS) {
    form.elements[name].classList.toggle("active", Boolean(form.elements[name].value));
  }
}

// --- the query window -----------------------------------------------------------------

function chooseBucket(spanMs) {
  if (spanMs <= 3 * 3600e3) return "minute";
  if (spanMs <= 14 * 86400e3) return "hour";
  return "day";
}

// A datetime-local input has no time zone. Its label reads "UTC", so parse it as UTC.
function parseUtcInput(text) {
  if (!text) return null;
  return new Date(text.length === 16 ? `${text}:00Z` : `${text}Z`);
}

function queryWindow() {
  const range = form.elements.range.value;
  let to = new Date();
  let from = new Date(to.getTime() - (RANGES_MS[range] || RANGES_MS["24h"]));
  if (range === "custom") {
    const customFrom = parseUtcInput(form.elements.from.value);
    const customTo = parseUtcInput(form.elements.to.value);
    if (customTo && !Number.isNaN(customTo.getTime())) to = customTo;
    if (customFrom && !Number.isNaN(customFrom.getTime())) from = customFrom;
    else from = new Date(to.getTime() - RANGES_MS["24h"]);
  }
  const span = to.getTime() - from.getTime();
  return { from: from.toISOString(), to: to.toISOString(), bucket: chooseBucket(span), span };
}

function makeContext() {
  const window_ = queryWindow();
  const filters = {};
  for (const name of DIMENSIONS) filters[name] = form.elements[name].value;
  // Parameters every analytics call takes: the window and the filters.
  const common = { from: window_.from, to: window_.to, ...filters };
  return {
    window: window_,
    filters,
    common,
    bucket: window_.bucket,
    get: getJson,
    usage: (extra = {}) => getJson("/v1/analytics/usage", { ...common, ...extra }),
    compliance: (extra = {}) => getJson("/v1/analytics/compliance", { ...common, ...extra }),
    quality: (extra = {}) => getJson("/v1/analytics/quality", { ...common, ...extra }),
    overview: () => getJson("/v1/analytics/overview", common),
    instances: () => getJson("/v1/instances"),
    csvLink: (report, extra = {}) => exportUrl(report, { ...common, ...extra }),
  };
}

function exportUrl(report, params) {
  const url = new URL(`/v1/analytics/${report}`, window.location.origin);
  for (const [name, value] of Object.entries({ ...params, format: "csv" })) {
    if (value) url.searchParams.set(name, value);
  }
  return url.pathname + url.search;
}

// --- filter choices -------------------------------------------------------------------

// Fill the site, instance, team and model lists from the traffic in the window and the
// enrolled instances, without the filters themselves so no choice disappears.
async function loadFilterChoices(context) {
  const base = { from: context.window.from, to: context.window.to };
  const [placed, teams, models, instances] = await Promise.all([
    getJson("/v1/analytics/usage", { ...base, group_by: "site,instance" }),
    getJson("/v1/analytics/usage", { ...base, group_by: "team" }),
    getJson("/v1/analytics/usage", { ...base, group_by: "model" }),
    getJson("/v1/instances"),
  ]);
  const choices = { site: new Set(), instance: new Set(), team: new Set(), model: new Set() };
  for (const row of placed.rows) {
    if (row.group.site) choices.site.add(row.group.site);
    if (row.group.instance) choices.instance.add(row.group.instance);
  }
  for (const row of teams.rows) if (row.group.team) choices.team.add(row.group.team);
  for (const row of models.rows) if (row.group.model) choices.model.add(row.group.model);
  for (const item of instances.items) {
    choices.site.add(item.site);
    choices.instance.add(item.name);
  }
  for (const name of DIMENSIONS) fillSelect(form.elements[name], choices[name]);
}

function fillSelect(select, values) {
  const current = select.value;
  const first = select.options[0];
  select.replaceChildren(first);
  for (const value of [...values].sort()) select.append(h("option", { value }, value));
  ensureOption(select, current);
  select.value = current;
}

// --- rendering ------------------------------------------------------------------------

function highlightNav(view) {
  for (const link of document.querySelectorAll(".sidebar nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function windowLine(window_) {
  const text = `Window: ${formatTime(window_.from)} to ${formatTime(window_.to)}.`;
  return h("p", { className: "window-line" }, text);
}

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

async function render({ quiet = false } = {}) {
  const serial = ++renderSerial;
  const { view } = readLocation();
  writeLocation(view, filterParams());
  highlightNav(view);
  markActiveFilters();
  if (!quiet) setStatus("Loading…");
  const context = makeContext();
  try {
    const [content] = await Promise.all([VIEWS[view](context), loadFilterChoices(context)]);
    if (serial !== renderSerial) return;
    const scroll = window.scrollY;
    destroyCharts();
    content.querySelector(".view-header")?.append(windowLine(context.window));
    viewRoot.replaceChildren(content);
    drawCharts(viewRoot);
    viewRoot.dataset.view = view;
    viewRoot.dataset.renderedAt = String(serial);
    window.scrollTo(0, scroll);
    setStatus(`Updated at ${new Date().toISOString().slice(11, 19)} UTC`);
  } catch (error) {
    if (serial !== renderSerial) return;
    setStatus(`Refresh failed: ${error.message}`, true);
    if (!viewRoot.firstChild || !quiet) {
      destroyCharts();
      viewRoot.replaceChildren(
        banner(`This view could not be loaded: ${error.message}. Check the control plane ` +
          "log, then press Refresh.", "error"),
      );
    }
  }
}

// Preset ranges end now, so each refresh moves the window; a custom range stays fixed
// and a refresh only picks up late events inside it.
function scheduleLive() {
  clearInterval(liveTimer);
  liveTimer = null;
  const seconds = Number(liveSelect.value);
  if (seconds > 0) {
    liveTimer = setInterval(() => {
      if (!document.hidden) render({ quiet: true });
    }, seconds * 1000);
  }
}

form.addEventListener("change", (event) => {
  if (event.target.name === "range") showCustomRange();
  render();
});
form.addEventListener("submit", (event) => event.preventDefault());
document.getElementById("refresh-now").addEventListener("click", () => render());
liveSelect.addEventListener("change", () => {
  writeLocation(readLocation().view, filterParams());
  scheduleLive();
});
window.addEventListener("hashchange", () => {
  applyParams(readLocation().params);
  scheduleLive();
  render();
});
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && Number(liveSelect.value) > 0) render({ quiet: true });
});

applyParams(readLocation().params);
render();
scheduleLive();
