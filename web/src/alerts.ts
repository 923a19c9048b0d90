// Alerts as the UI shows them (GET /alerts, /alerts/silences, /alerts/rules,
// /alerts/channels): the records, the count of firing alerts nobody acknowledged yet (the
// menu's badge, from every page), and the small helpers the Alerts page's tabs share.
import { ref, type Ref } from "vue";
import { get } from "./api";
import { useLive } from "./live";

export type Severity = "critical" | "warning" | "info";

export interface Alert {
  id: string;
  rule: string;
  severity: Severity;
  labels: Record<string, string>;
  summary: string;
  state: "firing" | "resolved";
  value: number | null;
  started_at: number;
  resolved_at: number | null;
  resolved_reason: "object removed" | null;
  acknowledged_by: string | null;
  acknowledged_at: number | null;
  silenced_by: string | null;
  inhibited_by: string | null;
  notified: string[];
}

export interface Silence {
  id: string;
  rule: string | null;
  matchers: Record<string, string>;
  until: number;
  comment: string;
  created_by: string;
  created_at: number;
}

export interface Rule {
  name: string;
  kind: "threshold" | "absence" | "rate";
  metric: string;
  labels: Record<string, string>;
  op: ">" | ">=" | "<" | "<=";
  value: number;
  for_seconds: number;
  severity: Severity;
  summary: string;
  enabled: boolean;
  built_in: boolean;
  changed: boolean;
}

export type ChannelKind = "smtp" | "snmp" | "webhook";

export interface Channel {
  name: string;
  /** The kind's settings; each secret is "set" or null. */
  settings: { kind: ChannelKind } & Record<string, unknown>;
  min_severity: Severity;
  send_resolved: boolean;
  enabled: boolean;
}

export interface CatalogMetric {
  name: string;
  kind: string;
  help: string;
}

/** The settings of each kind of channel that are secrets (models/alerts.py SECRET_FIELDS):
 * never shown, sent as null to keep the stored one, "" to clear it. */
export const SECRET_FIELDS = ["password", "community", "auth_key", "priv_key", "secret"];

/** The models of each kind's settings in the API's schema. */
export const CHANNEL_MODELS: Record<ChannelKind, string> = {
  smtp: "SmtpSettings",
  snmp: "SnmpSettings",
  webhook: "WebhookSettings",
};

export const TONE: Record<Severity, string> = { critical: "bad", warning: "warn", info: "neutral" };

/** The rules' names, kept up to date from the live stream: what a silence may name. */
export function useRuleNames(): Ref<string[]> {
  return useLive<string[]>(
    ["alert-rules"],
    async () => (await get<Rule[]>("/alerts/rules")).map((r) => r.name),
    [],
  ).data;
}

/** Durations a silence may be given, in seconds. */
export const DURATIONS = [3600, 4 * 3600, 24 * 3600, 7 * 86400];

/** Firing alerts nobody acknowledged yet: the number on the menu's Alerts entry. */
export const unacknowledged = ref(0);

export function countUnacknowledged(alerts: Alert[]): number {
  return alerts.filter((a) => a.state === "firing" && !a.acknowledged_by).length;
}

export function labelText(labels: Record<string, string>): string {
  return Object.entries(labels)
    .map(([name, value]) => `${name}=${value}`)
    .join(", ");
}

/** "name=value, name=value" (commas or new lines between) as labels; null when a part is
 * not name=value. */
export function parseLabels(text: string): Record<string, string> | null {
  const labels: Record<string, string> = {};
  for (const part of text.split(/[,\n]/)) {
    const item = part.trim();
    if (!item) continue;
    const cut = item.indexOf("=");
    if (cut <= 0) return null;
    labels[item.slice(0, cut).trim()] = item.slice(cut + 1).trim();
  }
  return labels;
}
