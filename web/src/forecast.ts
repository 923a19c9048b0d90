// GET /metrics/forecast: days until a pool, the cluster's memory or its CPU is full, with
// bounds (a trend through the hourly history; docs/operations.md, Monitoring), and how a
// view says it in the language shown.
import { onBeforeUnmount, onMounted, ref, type Ref } from "vue";
import { get } from "./api";
import { formatBytes, locale, t } from "./i18n";

export interface ResourceForecast {
  kind: "pool" | "memory" | "cpu";
  name: string;
  node: string | null;
  unit: "bytes" | "cores";
  status: "growing" | "not_growing" | "full" | "not_enough_history";
  capacity: number | null;
  used: number | null;
  growth_per_day: number | null;
  days: number | null;
  days_low: number | null;
  days_high: number | null;
  history_hours: number;
  steps: number;
}

interface Forecasts {
  window_days: number;
  resources: ResourceForecast[];
}

// A trend of hourly points moves slowly: read again every five minutes.
const REFRESH = 300_000;

/** The forecast, read when the view opens and every few minutes after; `error` if it failed. */
export function useForecast(): { data: Ref<ResourceForecast[]>; error: Ref<unknown> } {
  const data = ref<ResourceForecast[]>([]);
  const error = ref<unknown>(null);
  let timer: number | undefined;
  async function load(): Promise<void> {
    try {
      data.value = (await get<Forecasts>("/metrics/forecast")).resources;
      error.value = null;
    } catch (failure) {
      error.value = failure;
    }
  }
  onMounted(() => {
    void load();
    timer = window.setInterval(() => document.visibilityState === "visible" && void load(), REFRESH);
  });
  onBeforeUnmount(() => window.clearInterval(timer));
  return { data, error };
}

function days(value: number): string {
  return new Intl.NumberFormat(locale.value, { maximumFractionDigits: value < 10 ? 1 : 0 }).format(value);
}

/** "full in about N days (M–K)", "not growing", ... */
export function forecastText(r: ResourceForecast): string {
  switch (r.status) {
    case "growing": {
      const low = r.days_low === null ? "?" : days(r.days_low);
      const high = r.days_high === null ? t("forecast.later") : days(r.days_high);
      if (r.days === null) return t("forecast.beyond", { low, high });
      return t("forecast.fullIn", { days: days(r.days), low, high });
    }
    case "full":
      return t("forecast.full");
    case "not_growing":
      return t("forecast.notGrowing");
    default:
      return t("forecast.notEnoughHistory");
  }
}

/** What is in use of what there is: "2.4 GiB / 8 GiB", "1.5 / 8 cores". */
export function usageText(r: ResourceForecast): string {
  if (r.used === null || r.capacity === null) return "";
  if (r.unit === "bytes") return `${formatBytes(r.used)} / ${formatBytes(r.capacity)}`;
  const number = (v: number) => new Intl.NumberFormat(locale.value, { maximumFractionDigits: 1 }).format(v);
  return t("forecast.cores", { used: number(r.used), total: number(r.capacity) });
}

/** How soon: the order in which resources fill (the earliest bound first; never last). */
export function urgency(r: ResourceForecast): number {
  if (r.status === "full") return 0;
  if (r.status !== "growing") return Number.POSITIVE_INFINITY;
  return r.days_low ?? r.days ?? Number.MAX_VALUE;
}

/** The share in use now (-1: unknown, after any known one). */
function fullness(r: ResourceForecast): number {
  return r.used !== null && r.capacity ? r.used / r.capacity : -1;
}

/** The pool that fills first (one pool's part on a node counts as the pool); among those
 * with no day to tell, the fullest. */
export function firstPool(list: ResourceForecast[]): ResourceForecast | undefined {
  const pools = list.filter((r) => r.kind === "pool");
  return [...pools].sort((a, b) => urgency(a) - urgency(b) || fullness(b) - fullness(a))[0];
}
