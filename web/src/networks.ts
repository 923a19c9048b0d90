// What the networks view and the VM forms derive from switches and networks, without Vue:
// a network's effective MTU, its tag (VLAN, trunk, VNI), how a switch stands on each node.
import type { Network, NetworkKind, NodeNetworkStatus, Switch } from "./types";

/** The field each tagged kind needs (and no other kind may have). */
export const KIND_FIELD: Record<NetworkKind, string | undefined> = {
  untagged: undefined,
  vlan: "vlan",
  trunk: "trunk",
  vxlan: "vni",
};

/** Outer Ethernet, IPv4, UDP and VXLAN headers: what a VXLAN segment loses of its switch's MTU. */
export const VXLAN_OVERHEAD = 50;

/** The guests' MTU: the network's own, else its switch's (less the overhead on a VXLAN segment). */
export function effectiveMtu(network: Network, sw: Switch): number {
  if (network.mtu !== null) return network.mtu;
  return network.kind === "vxlan" ? sw.mtu - VXLAN_OVERHEAD : sw.mtu;
}

/** "VLAN 100", "100-199, 300", "VNI 5001", or "—" for an untagged network. */
export function tagOf(network: Network): string {
  if (network.kind === "vlan") return `VLAN ${network.vlan}`;
  if (network.kind === "trunk") return network.trunk.join(", ");
  if (network.kind === "vxlan") return `VNI ${network.vni}`;
  return "—";
}

export interface SwitchOnNode {
  node: string;
  state: "in-sync" | "problems" | "no-report" | "node-down";
  problems: string[];
  ports: number;
  repaired: string[];
  repairedAt: number | null;
}

/** How a switch stands on each node: the nodes' own reports, "no-report" where none has come. */
export function switchOnNodes(name: string, nodes: string[], reports: NodeNetworkStatus[]): SwitchOnNode[] {
  const byNode = new Map(reports.map((r) => [r.node, r]));
  const all = [...new Set([...nodes, ...reports.filter((r) => name in r.switches).map((r) => r.node)])].sort();
  return all.map((node) => {
    const report = byNode.get(node);
    const state = report?.switches[name];
    if (!state) return { node, state: "no-report", problems: [], ports: 0, repaired: [], repairedAt: null };
    const synced = state.in_sync && !state.problems.length;
    return {
      node,
      // A node that is down: its last report may no longer hold.
      state: report?.node_up === false ? "node-down" : synced ? "in-sync" : "problems",
      problems: state.problems,
      ports: state.ports,
      repaired: state.repaired ?? [],
      repairedAt: state.repaired_at ?? null,
    };
  });
}

/** A NIC may be given a fixed address only on a network with a subnet. */
export function hasSubnet(networks: Network[], name: string): boolean {
  return !!networks.find((n) => n.name === name)?.subnet;
}
