// Translation: one flat dictionary per language with the same keys (ru.ts is typed against
// en.ts, so a key missing in either fails the build). A key without a text shows as ⟦key⟧
// and is recorded, which the browser tests look for on every view.
import { ref } from "vue";
import en from "./en";
import ru from "./ru";

export type Key = keyof typeof en;
export type Locale = "en" | "ru";

const DICTIONARIES: Record<Locale, Record<string, string>> = { en, ru };
export const LOCALES: Locale[] = ["en", "ru"];
const STORED = "heron.locale";

function initial(): Locale {
  const saved = localStorage.getItem(STORED);
  if (saved === "en" || saved === "ru") return saved;
  const languages = navigator.languages?.length ? navigator.languages : [navigator.language];
  for (const language of languages) {
    const base = (language || "").toLowerCase().split("-")[0];
    if (base === "ru" || base === "en") return base;
  }
  return "en";
}

export const locale = ref<Locale>(initial());
export const missing = new Set<string>();

export function setLocale(next: Locale): void {
  locale.value = next;
  localStorage.setItem(STORED, next);
  document.documentElement.lang = next;
}
document.documentElement.lang = locale.value;

export function t(key: Key | string, params: Record<string, string | number> = {}): string {
  const text = DICTIONARIES[locale.value][key];
  if (text === undefined) {
    missing.add(`${locale.value}:${key}`);
    return `⟦${key}⟧`;
  }
  return text.replace(/\{(\w+)\}/g, (whole, name: string) =>
    name in params ? String(params[name]) : whole,
  );
}

/** Whether the dictionary has a text for a key built at run time (an optional hint). */
export function has(key: string): boolean {
  return key in DICTIONARIES[locale.value];
}

/** t() of a key built at run time (a state, a task kind): a fallback when there is none. */
export function tOr(key: string, fallback: string): string {
  return key in DICTIONARIES[locale.value] ? t(key) : fallback;
}

export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined) return "—";
  const units = ["unit.B", "unit.KiB", "unit.MiB", "unit.GiB", "unit.TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const number = new Intl.NumberFormat(locale.value, { maximumFractionDigits: 1 }).format(value);
  return `${number} ${t(units[unit])}`;
}

export function formatTime(seconds: number | null | undefined): string {
  if (!seconds) return "—";
  return new Intl.DateTimeFormat(locale.value, { dateStyle: "short", timeStyle: "medium" }).format(
    new Date(seconds * 1000),
  );
}

// For the browser tests: both dictionaries and what was asked for without a text.
(window as unknown as { __heronI18n: object }).__heronI18n = { en, ru, missing, locale };
