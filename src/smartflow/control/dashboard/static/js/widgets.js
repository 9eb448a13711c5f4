// Building blocks of the views: elements, figure cards, tables, charts and empty states.
// Text always goes in through textContent, never as HTML, because names and error
// messages come from instances and callers.

import { DASH, formatBucket } from "./format.js";

// Okabe-Ito colours, which stay distinct for the common kinds of colour blindness.
export const PALETTE = [
  "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];
const OTHER_COLOUR = "#9aa3ae";
const MAX_SERIES = 8;

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "className") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function viewHeader(title, description) {
  return h("div", { className: "view-header" }, h("h1", {}, title), h("p", {}, description));
}

export function banner(text, tone = "") {
  return h("div", { className: `banner ${tone}`.trim(), role: "note" }, text);
}

// One headline figure. `metric` names it for tests and `value` is the raw API value.
export function kpi({ metric, label, value, text, help, tone }) {
  const empty = text === DASH;
  return h(
    "div",
    { className: `kpi ${tone || ""}`.trim(), dataset: { metric, value: rawValue(value) } },
    h("div", { className: "label" }, label),
    h("div", { className: empty ? "value empty" : "value" }, text),
    help ? h("div", { className: "help" }, help) : null,
  );
}

function rawValue(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

export function kpiGrid(items) {
  return h("section", { className: "kpis" }, items.map(kpi));
}

export function card({ title, help, body, wide = false, id, actions }) {
  return h(
    "section",
    { className: wide ? "card wide" : "card", id },
    h("div", { className: "card-head" }, h("h2", {}, title), actions),
    help ? h("p", { className: "help" }, help) : null,
    body,
  );
}

export function emptyState(text) {
  return h("div", { className: "empty-state" }, text);
}

// columns: [{label, value(row) -> raw, format(raw) -> text, num, help}]
export function table(columns, rows, { empty = "No data in this window.", testid } = {}) {
  if (!rows.length) return emptyState(empty);
  const head = h(
    "tr",
    {},
    columns.map((column) =>
      h("th", { className: column.num ? "num" : "", title: column.help }, column.label),
    ),
  );
  const body = rows.map((row) =>
    h(
      "tr",
      {},
      columns.map((column) => {
        const raw = column.value(row);
        const content = column.format ? column.format(raw, row) : raw;
        const cell = h("td", { className: column.num ? "num" : "" });
        if (content instanceof Node) cell.append(content);
        else if (content === null || content === undefined || content === "") {
          cell.append(h("span", { className: "none" }, column.blank || "none"));
        } else cell.textContent = String(content);
        return cell;
      }),
    ),
  );
  return h(
    "div",
    { className: "table-scroll" },
    h("table", { dataset: { testid } }, h("thead", {}, head), h("tbody", {}, body)),
  );
}

export function badge(text, tone) {
  return h("span", { className: `badge ${tone}` }, text);
}

// --- charts --------------------------------------------------------------------------

const liveCharts = new Set();
const chartConfigs = new WeakMap();

export function destroyCharts() {
  for (const chart of liveCharts) chart.destroy();
  liveCharts.clear();
}

// Chart.js sizes a chart from its container, so the charts of a view are drawn once the
// view is in the page: call this right after inserting it.
export function drawCharts(root) {
  for (const canvas of root.querySelectorAll("canvas")) {
    const config = chartConfigs.get(canvas);
    if (config) liveCharts.add(new window.Chart(canvas, config));
  }
}

function configureChartDefaults() {
  const Chart = window.Chart;
  Chart.defaults.animation = false;
  Chart.defaults.responsive = true;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.font.family = getComputedStyle(document.documentElement).fontFamily;
  Chart.defaults.font.size = 12;
  Chart.defaults.color = "#5c6675";
  Chart.defaults.plugins.legend.labels.boxWidth = 12;
  Chart.defaults.plugins.legend.position = "bottom";
}

let configured = false;

// Return a chart container; drawCharts() draws the chart in it.
export function chartBox(config, { short = false, label } = {}) {
  if (!configured) {
    configureChartDefaults();
    configured = true;
  }
  const canvas = h("canvas", { role: "img", "aria-label": label });
  const box = h("div", { className: short ? "chart-box short" : "chart-box" }, canvas);
  chartConfigs.set(canvas, config);
  return box;
}

export function colour(index) {
  return PALETTE[index % PALETTE.length];
}

// One Chart.js dataset drawn in `shade`.
export function dataset(label, data, shade, extra = {}) {
  return { label, data, borderColor: shade, backgroundColor: shade, ...extra };
}

// --- time series ---------------------------------------------------------------------

const BUCKET_MS = { minute: 60000, hour: 3600000, day: 86400000 };

// Every bucket start in the window, so buckets without events show as zero.
export function bucketStarts(window) {
  const size = BUCKET_MS[window.bucket];
  const from = new Date(window.from).getTime();
  const to = new Date(window.to).getTime();
  const starts = [];
  for (let start = Math.floor(from / size) * size; start < to; start += size) {
    starts.push(start);
  }
  return starts;
}

export function bucketLabels(window, starts) {
  const span = new Date(window.to).getTime() - new Date(window.from).getTime();
  const multiDay = span > BUCKET_MS.day;
  return starts.map((start) => formatBucket(new Date(start), window.bucket, multiDay));
}

function groupName(group, dimension) {
  const value = group ? group[dimension] : undefined;
  return value === null || value === undefined ? "(none)" : String(value);
}

// Turn bucketed rows grouped by one dimension into Chart.js datasets, one per group
// value, keeping the largest groups by total and folding the rest into "other".
// Buckets without a value are `empty`: 0 for counts, null (a gap) for percentiles.
export function seriesByGroup(response, dimension, measure, { empty = 0 } = {}) {
  const starts = bucketStarts(response.window);
  const index = new Map(starts.map((start, position) => [start, position]));
  const series = new Map();
  for (const row of response.rows) {
    const name = dimension ? groupName(row.group, dimension) : "all";
    if (!series.has(name)) series.set(name, new Array(starts.length).fill(empty));
    const position = index.get(new Date(row.bucket).getTime());
    const value = measure(row);
    if (position === undefined || value === null || value === undefined) continue;
    const values = series.get(name);
    values[position] = (values[position] ?? 0) + value;
  }

  const ranked = [...series.entries()].sort(
    (a, b) => b[1].reduce((x, y) => x + y, 0) - a[1].reduce((x, y) => x + y, 0),
  );
  // Colours follow the names' alphabetical order, so charts of the same groups agree
  // whatever each chart measures.
  const names = [...series.keys()].sort();
  const shownSeries = ranked.slice(0, MAX_SERIES - 1);
  const folded = ranked.slice(MAX_SERIES - 1);

  if (folded.length === 1) shownSeries.push(folded[0]);
  else if (folded.length > 1) {
    const other = new Array(starts.length).fill(0);
    for (const [, values] of folded) values.forEach((value, i) => { other[i] += value ?? 0; });
    shownSeries.push([`other (${folded.length})`, other]);
  }

  return {
    labels: bucketLabels(response.window, starts),
    datasets: shownSeries.map(([name, data]) => {
      const shade = name.startsWith("other (") ? OTHER_COLOUR : colour(names.indexOf(name));
      return { label: name, data, backgroundColor: shade, borderColor: shade };
    }),
  };
}

export function stackedBars(data, { yTitle, tickFormat, tooltipFormat } = {}) {
  return {
    type: "bar",
    data,
    options: {
      scales: {
        x: {
          stacked: true,
          grid: { display: false },
          ticks: { maxRotation: 0, autoSkipPadding: 12 },
        },
        y: {
          stacked: true,
          beginAtZero: true,
          title: { display: Boolean(yTitle), text: yTitle },
          // Without a format the values are counts, so no tick between whole numbers.
          ticks: tickFormat ? { callback: tickFormat } : { precision: 0 },
        },
      },
      plugins: {
        legend: { display: data.datasets.length > 1 },
        tooltip: tooltipFormat
          ? { callbacks: { label: (item) => `${item.dataset.label}: ${tooltipFormat(item.raw)}` } }
          : {},
      },
    },
  };
}

export function lines(data, { yTitle, tickFormat, tooltipFormat, max } = {}) {
  for (const line of data.datasets) {
    // Straight segments and visible points: buckets are few and often sparse.
    line.tension = 0;
    line.pointRadius = 2.5;
    line.pointHitRadius = 6;
    line.borderWidth = 2;
    line.spanGaps = false;
  }
  return {
    type: "line",
    data,
    options: {
      interaction: { mode: "index", intersect: false },
      scales: {
        x: { grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 12 } },
        y: {
          beginAtZero: true,
          max,
          title: { display: Boolean(yTitle), text: yTitle },
          // Without a format the values are counts, so no tick between whole numbers.
          ticks: tickFormat ? { callback: tickFormat } : { precision: 0 },
        },
      },
      plugins: {
        legend: { display: data.datasets.length > 1 },
        tooltip: tooltipFormat
          ? { callbacks: { label: (item) => `${item.dataset.label}: ${tooltipFormat(item.raw)}` } }
          : {},
      },
    },
  };
}

// Horizontal bars for a map such as {"EMAIL": 12, "IBAN": 3}, largest first.
export function mapBars(map, { label, valueFormat } = {}) {
  const entries = Object.entries(map || {}).sort((a, b) => b[1] - a[1]).slice(0, 15);
  return {
    type: "bar",
    data: {
      labels: entries.map(([name]) => name),
      datasets: [{ label, data: entries.map(([, value]) => value), backgroundColor: colour(0) }],
    },
    options: {
      indexAxis: "y",
      scales: {
        x: { beginAtZero: true, ticks: { precision: 0 } },
        y: { grid: { display: false } },
      },
      plugins: {
        legend: { display: false },
        tooltip: valueFormat
          ? { callbacks: { label: (item) => valueFormat(item.raw) } }
          : {},
      },
    },
  };
}

export function doughnut(map, { order } = {}) {
  let entries = Object.entries(map || {}).filter(([, value]) => value > 0);
  if (order) {
    entries.sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0]));
  } else {
    entries.sort((a, b) => b[1] - a[1]);
  }
  return {
    type: "doughnut",
    data: {
      labels: entries.map(([name]) => name),
      datasets: [{
        data: entries.map(([, value]) => value),
        backgroundColor: entries.map((_, i) => colour(i)),
        borderWidth: 1,
      }],
    },
    options: { cutout: "55%", plugins: { legend: { position: "right" } } },
  };
}

// The values of an ungrouped series (seriesByGroup with no dimension).
export function onlySeries(series) {
  return series.datasets.length ? series.datasets[0].data : [];
}

export function isEmptyMap(map) {
  return !map || Object.values(map).every((value) => !value);
}

export function sumMap(map) {
  return Object.values(map || {}).reduce((total, value) => total + value, 0);
}
