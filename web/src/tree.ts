// The resource tree's model, without Vue or the DOM: what the cluster holds as a tree
// (Cluster → nodes → VMs, Storage → pools → volumes, Groups → groups → member VMs, Networks →
// switches → their networks, Security groups → groups with their rule counts) and which of
// its items are on screen, given what is expanded and what the search asks for. Only the
// children of expanded items are walked, so a thousand VMs under collapsed nodes cost nothing.
import type { Node, Pool, VM, Volume } from "./types";

export type ItemKind =
  | "cluster" | "node" | "vm" | "storage" | "pool" | "volume" | "groups" | "group"
  | "networks" | "switch" | "network" | "secgroups" | "secgroup";

export interface TreeItem {
  /** Unique in the tree: the path of ids from the root ("cluster/node:n1/vm:…"). */
  key: string;
  kind: ItemKind;
  /** The record's name (a VM's, a node's…), or the dictionary key of a root's title. */
  name: string;
  /** A state to show as a badge. */
  state?: string;
  /** A short note after the name (a pool's type, a group's rule). */
  note?: string;
  /** The UI path the item opens. */
  to: string;
  /** null: a leaf. An array (maybe empty): it can be expanded. */
  children: TreeItem[] | null;
  /** How many children it has, when that is known (a pool's volumes are read when needed). */
  count: number | null;
}

export interface Group {
  name: string;
  placement: string;
  strict: boolean;
}

export interface TreeData {
  nodes: Node[];
  vms: VM[];
  pools: Pool[];
  /** Volumes by pool name, for the pools whose volumes were read. */
  volumes: Record<string, Volume[]>;
  groups: Group[];
  switches: { name: string; backend: string }[];
  networks: { name: string; switch: string; kind: string }[];
  securityGroups: { name: string; rules: unknown[] }[];
}

const byName = <T extends { name: string }>(a: T, b: T): number =>
  a.name < b.name ? -1 : a.name > b.name ? 1 : 0;

function vmItem(parent: string, vm: VM): TreeItem {
  return { key: `${parent}/vm:${vm.id}`, kind: "vm", name: vm.name, state: vm.state, to: `/vms/${vm.id}`, children: null, count: null };
}

/** The whole tree, each level sorted by name. Roots' names are dictionary keys. */
export function buildTree(data: TreeData): TreeItem[] {
  const perNode = new Map<string, VM[]>();
  const perGroup = new Map<string, VM[]>();
  const add = (map: Map<string, VM[]>, key: string, vm: VM): void => {
    const list = map.get(key);
    if (list) list.push(vm);
    else map.set(key, [vm]);
  };
  for (const vm of [...data.vms].sort(byName)) {
    add(perNode, vm.node, vm);
    if (vm.spec.group) add(perGroup, vm.spec.group, vm);
  }
  const known = new Set(data.nodes.map((n) => n.name));
  const nodes: TreeItem[] = [...data.nodes].sort(byName).map((node) => {
    const key = `cluster/node:${node.name}`;
    const vms = perNode.get(node.name) ?? [];
    return {
      key, kind: "node", name: node.name, state: node.state, to: `/nodes?node=${encodeURIComponent(node.name)}`,
      children: vms.map((vm) => vmItem(key, vm)), count: vms.length,
    };
  });
  // VMs waiting for a node (HA pending) or on a node that left: listed, not lost.
  const elsewhere = [...perNode.entries()].filter(([node]) => !known.has(node)).flatMap(([, vms]) => vms);
  if (elsewhere.length) {
    const key = "cluster/unplaced";
    nodes.push({
      key, kind: "node", name: "tree.unplaced", to: "/vms",
      children: elsewhere.sort(byName).map((vm) => vmItem(key, vm)), count: elsewhere.length,
    });
  }
  const pools: TreeItem[] = [...data.pools].sort(byName).map((pool) => {
    const key = `storage/pool:${pool.name}`;
    const volumes = data.volumes[pool.name];
    return {
      key, kind: "pool", name: pool.name, note: pool.type, to: `/storage?pool=${encodeURIComponent(pool.name)}`,
      children: [...(volumes ?? [])].sort(byName).map((volume) => ({
        key: `${key}/volume:${volume.id}`, kind: "volume" as const, name: volume.name, state: volume.state,
        to: `/storage?pool=${encodeURIComponent(pool.name)}`, children: null, count: null,
      })),
      count: volumes ? volumes.length : null,
    };
  });
  const groups: TreeItem[] = [...data.groups].sort(byName).map((group) => {
    const key = `groups/group:${group.name}`;
    const members = perGroup.get(group.name) ?? [];
    return {
      key, kind: "group", name: group.name, note: group.placement, to: `/groups?group=${encodeURIComponent(group.name)}`,
      children: members.map((vm) => vmItem(key, vm)), count: members.length,
    };
  });
  const perSwitch = new Map<string, TreeData["networks"]>();
  for (const network of [...data.networks].sort(byName)) {
    const list = perSwitch.get(network.switch);
    if (list) list.push(network);
    else perSwitch.set(network.switch, [network]);
  }
  const switches: TreeItem[] = [...data.switches].sort(byName).map((sw) => {
    const key = `networks/switch:${sw.name}`;
    const networks = perSwitch.get(sw.name) ?? [];
    return {
      key, kind: "switch", name: sw.name, note: sw.backend, to: "/networks",
      children: networks.map((network) => ({
        key: `${key}/network:${network.name}`, kind: "network" as const, name: network.name, note: network.kind,
        to: "/networks", children: null, count: null,
      })),
      count: networks.length,
    };
  });
  const securityGroups: TreeItem[] = [...data.securityGroups].sort(byName).map((group) => ({
    key: `secgroups/secgroup:${group.name}`, kind: "secgroup", name: group.name, note: String(group.rules.length),
    to: "/security-groups", children: null, count: null,
  }));
  return [
    { key: "cluster", kind: "cluster", name: "tree.cluster", to: "/nodes", children: nodes, count: data.nodes.length },
    { key: "storage", kind: "storage", name: "tree.storage", to: "/storage", children: pools, count: pools.length },
    { key: "groups", kind: "groups", name: "tree.groups", to: "/groups", children: groups, count: groups.length },
    { key: "networks", kind: "networks", name: "tree.networks", to: "/networks", children: switches, count: switches.length },
    {
      key: "secgroups", kind: "secgroups", name: "tree.securityGroups", to: "/security-groups",
      children: securityGroups, count: securityGroups.length,
    },
  ];
}

/** One line of the tree on screen, with what WAI-ARIA's treeitem needs to say where it is. */
export interface Row {
  item: TreeItem;
  level: number;
  /** Position among its shown siblings (1-based) and how many there are. */
  position: number;
  siblings: number;
  parent: string | null;
  /** undefined for a leaf. */
  expanded: boolean | undefined;
}

/**
 * The rows on screen. Without a query: every root, and the children of expanded items. With
 * one: the items whose name contains it and their ancestors, which are shown expanded; an
 * item that matches shows all its children when the user expands it.
 * `label` turns a root's title key into the text the user sees (and searches).
 */
export function visibleRows(
  roots: TreeItem[],
  expanded: ReadonlySet<string>,
  query: string,
  label: (item: TreeItem) => string,
): Row[] {
  const needle = query.trim().toLowerCase();
  const rows: Row[] = [];
  if (!needle) {
    walk(roots, 1, null, (item) => expanded.has(item.key), () => true);
    return rows;
  }
  const matches = (item: TreeItem): boolean => label(item).toLowerCase().includes(needle);
  // Whether an item or anything below it matches, found once per item.
  const found = new Map<string, boolean>();
  const hit = (item: TreeItem): boolean => {
    let known = found.get(item.key);
    if (known === undefined) {
      known = matches(item) || (item.children ?? []).some(hit);
      found.set(item.key, known);
    }
    return known;
  };
  const below = (item: TreeItem): boolean => (item.children ?? []).some(hit);
  walk(
    roots.filter(hit),
    1,
    null,
    (item) => below(item) || (matches(item) && expanded.has(item.key)),
    (item, parent) => hit(item) || (matches(parent) && !below(parent)),
  );
  return rows;

  function walk(
    items: TreeItem[],
    level: number,
    parent: string | null,
    open: (item: TreeItem) => boolean,
    keep: (item: TreeItem, parent: TreeItem) => boolean,
  ): void {
    items.forEach((item, index) => {
      const isOpen = item.children !== null && open(item);
      rows.push({
        item, level, position: index + 1, siblings: items.length, parent,
        expanded: item.children === null ? undefined : isOpen,
      });
      if (isOpen && item.children) {
        walk(item.children.filter((child) => keep(child, item)), level + 1, item.key, open, keep);
      }
    });
  }
}
