// Number, money, duration and time formats. Fixed to en-US and UTC so every operator
// sees the same text, whatever the browser's locale.

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
export const DASH = "—";

export function formatInt(value) {
  if (value === null || value === undefined) return DASH;
  return integer.format(value);
}

export function formatCompact(value) {
  if (value === null || value === undefined) return DASH;
  return Math.abs(value) >= 100000 ? compact.format(value) : integer.format(value);
}

const usdFormats = new Map();

// Cost values arrive as exact decimal strings of US dollars. Intl.NumberFormat formats a
// string as that exact decimal and rounds half away from zero, so "0.29105" shows as
// $0.2911 where a float would give $0.2910.
export function formatUsd(value) {
  if (value === null || value === undefined) return DASH;
  const magnitude = Math.abs(Number(value));
  let digits = 2;
  if (magnitude > 0 && magnitude < 0.01) digits = 6;
  else if (magnitude > 0 && magnitude < 1) digits = 4;
  if (!usdFormats.has(digits)) {
    usdFormats.set(digits, new Intl.NumberFormat("en-US", {
      minimumFractionDigits: digits,
      maximumFractionDigits: digits,
    }));
  }
  return "$" + usdFormats.get(digits).format(typeof value === "string" ? value : Number(value));
}

// Axis ticks: fewer decimals than formatUsd, since they mark round steps.
export function formatUsdTick(value) {
  const magnitude = Math.abs(value);
  let digits = 2;
  if (magnitude > 0 && magnitude < 0.001) digits = 5;
  else if (magnitude > 0 && magnitude < 0.1) digits = 3;
  return "$" + Number(value).toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

// "1 request", "3 requests"
export function plural(count, noun, nouns = `${noun}s`) {
  return `${integer.format(count)} ${count === 1 ? noun : nouns}`;
}

export function formatPercent(rate) {
  if (rate === null || rate === undefined) return DASH;
  const percent = rate * 100;
  const digits = percent !== 0 && Math.abs(percent) < 10 ? 1 : 0;
  return `${percent.toFixed(digits)}%`;
}

export function formatMs(ms) {
  if (ms === null || ms === undefined) return DASH;
  if (ms >= 10000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${Math.round(ms)} ms`;
}

export function formatScore(score) {
  if (score === null || score === undefined) return DASH;
  return score.toFixed(2);
}

function pad(number) {
  return String(number).padStart(2, "0");
}

// "2026-08-01 10:04 UTC"
export function formatTime(text) {
  if (!text) return DASH;
  const moment = new Date(text);
  if (Number.isNaN(moment.getTime())) return text;
  const month = pad(moment.getUTCMonth() + 1);
  const day = `${moment.getUTCFullYear()}-${month}-${pad(moment.getUTCDate())}`;
  return `${day} ${pad(moment.getUTCHours())}:${pad(moment.getUTCMinutes())} UTC`;
}

// A chart label for a bucket start: the clock time for minute and hour buckets, the date
// for day buckets, and both when the window spans several days.
export function formatBucket(moment, bucket, multiDay) {
  const day = `${pad(moment.getUTCMonth() + 1)}-${pad(moment.getUTCDate())}`;
  const clock = `${pad(moment.getUTCHours())}:${pad(moment.getUTCMinutes())}`;
  if (bucket === "day") return day;
  return multiDay ? `${day} ${clock}` : clock;
}

export function formatAgo(text, now = Date.now()) {
  if (!text) return "never";
  const seconds = Math.round((now - new Date(text).getTime()) / 1000);
  if (seconds < 0) return "just now";
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 36 * 3600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} days ago`;
}
