// What the security-group view and the NIC forms derive from groups and rules, without Vue:
// a rule's ports and remote as shown, which rule fields a protocol takes, and the NIC's
// groups and rate limits as the API's requests carry them.
import type { Nic, SecurityRule } from "./types";

/** Only tcp and udp rules name ports (the API refuses them on others). */
export function takesPorts(protocol: unknown): boolean {
  return protocol === "tcp" || protocol === "udp";
}

/** The rule fields the form shows: ports for tcp/udp, and one of remote or remote group. */
export function ruleFieldNames(rule: Record<string, unknown>): Set<string> {
  const names = new Set(["direction", "protocol", "ports", "remote", "remote_group", "description"]);
  if (!takesPorts(rule.protocol)) names.delete("ports");
  if (rule.remote_group) names.delete("remote");
  else if (rule.remote) names.delete("remote_group");
  return names;
}

/** A rule's fields as sent: those shown, empty text as "not given". */
export function ruleBody(rule: Record<string, unknown>): Record<string, unknown> {
  const shown = ruleFieldNames(rule);
  return Object.fromEntries(
    Object.entries(rule)
      .filter(([name]) => shown.has(name))
      .map(([name, value]) => [name, value === "" && name !== "description" ? null : value]),
  );
}

/** "22", "1000-2000", or "" for every port. */
export function portsOf(rule: SecurityRule): string {
  return takesPorts(rule.protocol) ? (rule.ports ?? "") : "";
}

/** Where a rule's traffic comes from or goes to: a network, a group, or anywhere (""). */
export function remoteOf(rule: SecurityRule): { kind: "cidr" | "group" | "any"; value: string } {
  if (rule.remote) return { kind: "cidr", value: rule.remote };
  if (rule.remote_group) return { kind: "group", value: rule.remote_group };
  return { kind: "any", value: "" };
}

/** A NIC's groups and rates as the forms edit them: a rate's input is empty for "no limit". */
export interface NicPolicy {
  security_groups: string[];
  ingress_mbps: number | string | null;
  egress_mbps: number | string | null;
}

export function newPolicy(nic?: Nic): NicPolicy {
  return {
    security_groups: [...(nic?.security_groups ?? [])],
    ingress_mbps: nic?.ingress_mbps ?? null,
    egress_mbps: nic?.egress_mbps ?? null,
  };
}

/** A rate input's value: null (no limit) when empty; else the number (the API checks it). */
export function rate(value: number | string | null): number | null {
  if (value === null || value === "") return null;
  return typeof value === "number" ? value : Number(value.trim());
}

/** A new NIC's groups and rates: only those given, so that a plain NIC's request stays plain. */
export function policyBody(policy: NicPolicy): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  if (policy.security_groups.length) body.security_groups = [...policy.security_groups];
  const ingress = rate(policy.ingress_mbps);
  const egress = rate(policy.egress_mbps);
  if (ingress !== null) body.ingress_mbps = ingress;
  if (egress !== null) body.egress_mbps = egress;
  return body;
}

/** A NIC's changes (PATCH): only what differs; a rate emptied is null, which lifts the limit. */
export function policyChanges(policy: NicPolicy, nic: Nic): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  const groups = policy.security_groups;
  const had = nic.security_groups ?? [];
  if (groups.length !== had.length || groups.some((g, i) => g !== had[i])) body.security_groups = [...groups];
  const ingress = rate(policy.ingress_mbps);
  const egress = rate(policy.egress_mbps);
  if (ingress !== (nic.ingress_mbps ?? null)) body.ingress_mbps = ingress;
  if (egress !== (nic.egress_mbps ?? null)) body.egress_mbps = egress;
  return body;
}
