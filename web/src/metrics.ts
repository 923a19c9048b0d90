// Monica's history for the charts: the ranges a person picks, the reads of
// GET /metrics/history, the sums and ratios the views draw, and values in each unit.
import { ref, watch } from "vue";
import { get } from "./api";
import { formatBytes, locale, t } from "./i18n";

/** A point as the API sends it: time (epoch seconds), min, avg, max (null: nothing measured). */
export type Point = [number, number | null, number | null, number | null];

export interface Series {
  key: string;
  labels: Record<string, string>;
  points: Point[];
}

interface History {
  resolution: string;
  step: number;
  start: number;
  end: number;
  series: { key: string; points: Point[] }[];
}

/**
 * What a chart draws: one line of averages, with the band from minimums to maximums when
 * `band` (a rollup of 1 min or 1 h keeps both; a sum or ratio of several series has none).
 */
export interface Line {
  label: string;
  points: Point[];
  band: boolean;
}

/**
 * percent: 0-100; cpu: CPU seconds a second, shown as % of one CPU (150 % = 1.5 CPUs);
 * bytes; bytesPerSecond; number: as it is (a load average).
 */
export type Unit = "percent" | "cpu" | "bytes" | "bytesPerSecond" | "number";

// -- ranges ----------------------------------------------------------------------------------

/**
 * The ranges offered: how far back, the step asked for (about 1000-1500 points: the server
 * rolls finer data up into buckets of it) and how often a chart reads again. Up to 24 h a
 * chart follows the 10 s samples; longer ranges move by their step, read each minute or so.
 * "live": a node's or a VM's points of each second, from the node that runs it (GET
 * /metrics/live, in memory for the last 15 minutes while someone watches).
 */
export const RANGES = [
  { key: "live", seconds: 900, step: 1, refresh: 1 },
  { key: "15m", seconds: 900, step: 10, refresh: 10 },
  { key: "1h", seconds: 3600, step: 10, refresh: 10 },
  { key: "6h", seconds: 6 * 3600, step: 30, refresh: 10 },
  { key: "24h", seconds: 86400, step: 60, refresh: 10 },
  { key: "7d", seconds: 7 * 86400, step: 600, refresh: 60 },
  { key: "30d", seconds: 30 * 86400, step: 1800, refresh: 300 },
  { key: "1y", seconds: 365 * 86400, step: 21600, refresh: 3600 },
] as const;
export type RangeKey = (typeof RANGES)[number]["key"];
export type Range = (typeof RANGES)[number];

const STORED = "heron.metricsRange";
function stored(): RangeKey {
  const saved = localStorage.getItem(STORED);
  return RANGES.find((r) => r.key === saved)?.key ?? "1h";
}

/** The range every chart shows: one choice for all views, kept across visits. */
export const rangeKey = ref<RangeKey>(stored());
watch(rangeKey, (key) => localStorage.setItem(STORED, key));

export function rangeOf(key: RangeKey): Range {
  return RANGES.find((r) => r.key === key) ?? RANGES[1];
}

/** The span a read covers: the last `seconds` up to now; `live`: from the live view. */
export interface Window {
  start: number;
  end: number;
  step: number;
  live?: boolean;
}

export function windowOf(range: Range, now = Date.now() / 1000): Window {
  const end = Math.ceil(now);
  return { start: end - range.seconds, end, step: range.step, live: range.key === "live" };
}

// -- reading ---------------------------------------------------------------------------------

/** `name{a="x",b="y"}` -> its labels (the server escapes `"` and `\` in values). */
export function labelsOf(key: string): Record<string, string> {
  const labels: Record<string, string> = {};
  const open = key.indexOf("{");
  if (open < 0) return labels;
  const pattern = /(\w+)="((?:[^"\\]|\\.)*)"/g;
  for (const match of key.slice(open + 1, -1).matchAll(pattern)) {
    labels[match[1]] = match[2].replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
  }
  return labels;
}

/**
 * Every series of `metric` whose labels include `labels`, over `w`, from all nodes. In a
 * live window, a VM's (a `vm` label) or a node's (a `node` label) series come from the live
 * view; other series (the cluster's, a pool's) from the 10 s history of the last 15 minutes.
 */
export async function history(
  metric: string,
  labels: Record<string, string>,
  w: Window,
): Promise<Series[]> {
  if (w.live) {
    const object = labels.vm ? `vm:${labels.vm}` : labels.node ? `node:${labels.node}` : null;
    if (object !== null) return liveSeries(object, metric, labels);
    // Read each second, these change each 10 s: an answer serves for that long.
    const key = JSON.stringify([metric, labels]);
    const kept = recent.get(key);
    if (kept && Date.now() - kept.at < 10_000) return kept.answer;
    const answer = fromHistory(metric, labels, { ...w, step: 10, live: false });
    recent.set(key, { at: Date.now(), answer });
    answer.catch(() => recent.delete(key));
    return answer;
  }
  return fromHistory(metric, labels, w);
}

const recent = new Map<string, { at: number; answer: Promise<Series[]> }>();

async function fromHistory(metric: string, labels: Record<string, string>, w: Window): Promise<Series[]> {
  const query = new URLSearchParams({
    metric,
    start: String(w.start),
    end: String(w.end),
    step: String(w.step),
  });
  for (const [name, value] of Object.entries(labels)) query.append("label", `${name}=${value}`);
  const answer = await get<History>(`/metrics/history?${query}`);
  return answer.series.map((s) => ({ key: s.key, labels: labelsOf(s.key), points: s.points }));
}

// -- the live view ---------------------------------------------------------------------------

interface LiveAnswer {
  object: string;
  now: number;
  series: { key: string; points: [number, number][] }[];
}

/** What the page holds of one watched object: its series' points, the last point's time. */
interface Followed {
  series: Map<string, [number, number][]>;
  last: number | null;
  asked: number;
  pending: Promise<void> | null;
}

const LIVE_KEEP = 900; // seconds of points kept, as the node keeps them
const followed = new Map<string, Followed>();

/**
 * The object's points, new ones asked for at most about once a second whatever the number of
 * charts reading them (one request serves all of them; `since` asks for the new points only).
 */
async function follow(object: string): Promise<Followed> {
  let f = followed.get(object);
  if (!f) {
    f = { series: new Map(), last: null, asked: 0, pending: null };
    followed.set(object, f);
  }
  const mine = f;
  if (mine.pending) {
    await mine.pending;
    return mine;
  }
  if (Date.now() - mine.asked < 900) return mine;
  mine.asked = Date.now();
  mine.pending = (async () => {
    const query = new URLSearchParams({ object });
    if (mine.last !== null) query.set("since", String(mine.last));
    const answer = await get<LiveAnswer>(`/metrics/live?${query}`);
    const oldest = answer.now - LIVE_KEEP;
    for (const s of answer.series) {
      mine.series.set(s.key, [...(mine.series.get(s.key) ?? []), ...s.points]);
      for (const [time] of s.points) mine.last = Math.max(mine.last ?? time, time);
    }
    // The last 15 minutes, of series still measured and of those gone (a disk unplugged).
    for (const [key, points] of mine.series) {
      const kept = points.filter((p) => p[0] >= oldest);
      if (kept.length) mine.series.set(key, kept);
      else mine.series.delete(key);
    }
  })().finally(() => {
    mine.pending = null;
  });
  await mine.pending;
  return mine;
}

/** The live series of `metric` of `object` whose labels include `labels` (but `node`). */
async function liveSeries(object: string, metric: string, labels: Record<string, string>): Promise<Series[]> {
  const f = await follow(object);
  const found: Series[] = [];
  const node: Record<string, string> = object.startsWith("node:") ? { node: object.slice(5) } : {};
  for (const [key, points] of [...f.series].sort((a, b) => a[0].localeCompare(b[0]))) {
    if (key.split("{")[0] !== metric) continue;
    const own: Record<string, string> = { ...labelsOf(key), ...node };
    if (!Object.entries(labels).every(([name, value]) => name === "node" || own[name] === value)) continue;
    found.push({ key, labels: own, points: points.map(([time, v]): Point => [time, v, v, v]) });
  }
  return found;
}

/** A series as a line of the chart, band and all. */
export function line(label: string, series: Series, scale = 1): Line {
  const points = series.points.map(
    ([time, min, avg, max]): Point => [time, times(min, scale), times(avg, scale), times(max, scale)],
  );
  return { label, points, band: true };
}

function times(value: number | null, scale: number): number | null {
  return value === null ? null : value * scale;
}

type Values = Map<number, number>;

/** Averages of the series, summed per point time and per group (`group` of the labels). */
export function sumBy(
  series: Series[],
  group: (labels: Record<string, string>) => string,
): Map<string, Values> {
  const sums = new Map<string, Values>();
  for (const s of series) {
    const into = sums.get(group(s.labels)) ?? new Map<number, number>();
    sums.set(group(s.labels), into);
    for (const [time, , avg] of s.points) {
      if (avg !== null) into.set(time, (into.get(time) ?? 0) + avg);
    }
  }
  return sums;
}

/** `f` of two groups' values at each time both have: a line without a band. */
export function pointwise(
  label: string,
  a: Values | undefined,
  b: Values | undefined,
  f: (a: number, b: number) => number | null,
): Line {
  const points: Point[] = [];
  for (const [time, x] of [...(a ?? new Map<number, number>())].sort((p, q) => p[0] - q[0])) {
    const y = b?.get(time);
    points.push([time, null, y === undefined ? null : f(x, y), null]);
  }
  return { label, points, band: false };
}

/**
 * `a` less `b` at each time both have (memory used: total less available); the band from
 * a's average less b's maximum to a's average less b's minimum.
 */
export function difference(label: string, a: Series | undefined, b: Series | undefined): Line {
  const others = new Map((b?.points ?? []).map((p) => [p[0], p]));
  const points: Point[] = (a?.points ?? []).map(([time, , avg]) => {
    const other = others.get(time);
    if (avg === null || !other || other[2] === null) return [time, null, null, null];
    return [time, minus(avg, other[3]), avg - other[2], minus(avg, other[1])];
  });
  return { label, points, band: true };
}

function minus(a: number, b: number | null): number | null {
  return b === null ? null : a - b;
}

/** Series by the value of one of their labels (one series each: a node's, a disk's). */
export function byLabel(series: Series[], name: string): Map<string, Series> {
  return new Map(series.map((s) => [s.labels[name] ?? "", s]));
}

/** Lines in a stable order: by label, numbers in names compared as numbers (disk2 < disk10). */
export function sorted(lines: Line[]): Line[] {
  const order = new Intl.Collator(undefined, { numeric: true });
  return [...lines].sort((a, b) => order.compare(a.label, b.label));
}

// -- values in their units --------------------------------------------------------------------

function number(value: number, digits: number): string {
  return new Intl.NumberFormat(locale.value, { maximumFractionDigits: digits }).format(value);
}

function percent(value: number): string {
  const digits = Math.abs(value) < 10 ? 1 : 0;
  return new Intl.NumberFormat(locale.value, { style: "percent", maximumFractionDigits: digits }).format(
    value / 100,
  );
}

/** A value in its unit, in the language shown ("—": nothing measured). */
export function formatValue(value: number | null | undefined, unit: Unit): string {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  switch (unit) {
    case "percent":
      return percent(value);
    case "cpu":
      return percent(value * 100);
    case "bytes":
      return formatBytes(value);
    case "bytesPerSecond":
      return t("unit.perSecond", { value: formatBytes(value) });
    default:
      return number(value, value < 10 ? 2 : 1);
  }
}

/** A time of the axis: as precise as the ticks' spacing (`incr`, seconds) needs. */
export function formatTick(seconds: number, incr: number): string {
  const options: Intl.DateTimeFormatOptions =
    incr < 60
      ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
      : incr < 86400
        ? { hour: "2-digit", minute: "2-digit" }
        : incr < 28 * 86400
          ? { day: "numeric", month: "short" }
          : { month: "short", year: "numeric" };
  return new Intl.DateTimeFormat(locale.value, options).format(new Date(seconds * 1000));
}

/** The time of a hovered point, to the second. */
export function formatMoment(seconds: number): string {
  return new Intl.DateTimeFormat(locale.value, { dateStyle: "medium", timeStyle: "medium" }).format(
    new Date(seconds * 1000),
  );
}
