// What each chart of the views draws: the series it reads (metric names of node_exporter and
// the libvirt exporter, as src/heron/monitor/catalog.py lists them) and how they become lines.
import { t, tOr } from "./i18n";
import {
  byLabel, difference, history, line, pointwise, sorted, sumBy, type Line, type Point, type Series,
  type Unit, type Window,
} from "./metrics";

export type Source = (w: Window) => Promise<Line[]>;

// CPU time that is not work: busy is everything else.
const IDLE = new Set(["idle", "iowait"]);
const node = (labels: Record<string, string>) => labels.node ?? "";

/** Per node: the share of its CPUs' time in any mode but idle and iowait, in %. */
export const clusterCpu: Source = async (w) => {
  const series = await history("node_cpu_seconds_total", {}, w);
  const all = sumBy(series, node);
  const idle = sumBy(series.filter((s) => IDLE.has(s.labels.mode)), node);
  const busy = (total: number, free: number) => (total > 0 ? (100 * (total - free)) / total : null);
  return sorted([...all].map(([name, total]) => pointwise(name, total, idle.get(name), busy)));
};

/** Per node: RAM in use (total less what the kernel counts available). */
export const clusterMemory: Source = async (w) => {
  const [total, available] = await Promise.all([
    history("node_memory_MemTotal_bytes", {}, w),
    history("node_memory_MemAvailable_bytes", {}, w),
  ]);
  const free = byLabel(available, "node");
  return sorted(total.map((s) => difference(node(s.labels), s, free.get(node(s.labels)))));
};

/** A node's CPU time per mode (idle left out), as % of one CPU. */
export function nodeCpu(name: string): Source {
  return async (w) => {
    const series = await history("node_cpu_seconds_total", { node: name }, w);
    return sorted(
      series
        .filter((s) => s.labels.mode !== "idle")
        .map((s) => line(tOr(`metrics.mode.${s.labels.mode}`, s.labels.mode), s)),
    );
  };
}

export function nodeLoad(name: string): Source {
  return async (w) => {
    const minutes = [1, 5, 15];
    const read = await Promise.all(minutes.map((m) => history(`node_load${m}`, { node: name }, w)));
    return read.flatMap((series, i) =>
      series.map((s) => line(t("metrics.loadMinutes", { minutes: minutes[i] }), s)),
    );
  };
}

export function nodeMemory(name: string): Source {
  return async (w) => {
    const [total, available] = await Promise.all([
      history("node_memory_MemTotal_bytes", { node: name }, w),
      history("node_memory_MemAvailable_bytes", { node: name }, w),
    ]);
    if (!total.length) return [];
    return [
      difference(t("metrics.used"), total[0], available[0]),
      { ...line(t("metrics.total"), total[0]), band: false },
    ];
  };
}

/** Two counters per device (read and written, received and sent), in bytes a second. */
function pair(
  metrics: [string, string],
  labels: Record<string, string>,
  device: string,
  names: [string, string],
  skip: (device: string) => boolean = () => false,
): Source {
  return async (w) => {
    const read = await Promise.all(metrics.map((m) => history(m, labels, w)));
    // Device by device (disk2 before disk10), each's first counter first.
    const order = new Intl.Collator(undefined, { numeric: true });
    const found = read.flatMap((series: Series[], i) =>
      series
        .filter((s) => !skip(s.labels[device] ?? ""))
        .map((s) => ({ device: s.labels[device] ?? "", i, s })),
    );
    found.sort((a, b) => order.compare(a.device, b.device) || a.i - b.i);
    return found.map(({ device: name, i, s }) => line(t(names[i], { device: name }), s));
  };
}

export const nodeDisks = (name: string): Source =>
  pair(["node_disk_read_bytes_total", "node_disk_written_bytes_total"], { node: name }, "device", [
    "metrics.read",
    "metrics.written",
  ]);

// The loopback carries no traffic of the cluster's.
export const nodeNetwork = (name: string): Source =>
  pair(
    ["node_network_receive_bytes_total", "node_network_transmit_bytes_total"],
    { node: name },
    "device",
    ["metrics.received", "metrics.sent"],
    (device) => device === "lo",
  );

/** The VM's QEMU's CPU time, and the time its vCPUs waited for a host CPU, as % of a CPU. */
export function vmCpu(id: string): Source {
  return async (w) => {
    const [used, ready] = await Promise.all([
      history("libvirt_domain_info_cpu_time_seconds_total", { vm: id }, w),
      history("libvirt_domain_info_cpu_ready_seconds_total", { vm: id }, w),
    ]);
    return [
      ...used.map((s) => line(t("metrics.cpuUsed"), s)),
      ...ready.map((s) => line(t("metrics.cpuReady"), s)),
    ];
  };
}

export function vmMemory(id: string): Source {
  return async (w) => {
    const names: [string, string][] = [
      ["libvirt_domain_info_memory_usage_bytes", "metrics.hostMemory"],
      ["libvirt_domain_info_maximum_memory_bytes", "metrics.givenMemory"],
      ["libvirt_domain_memory_stats_actual_balloon_bytes", "metrics.balloonMemory"],
    ];
    const read = await Promise.all(names.map(([m]) => history(m, { vm: id }, w)));
    return read.flatMap((series, i) => series.map((s) => line(t(names[i][1]), s)));
  };
}

export const vmDisks = (id: string): Source =>
  pair(
    ["libvirt_domain_block_stats_read_bytes_total", "libvirt_domain_block_stats_write_bytes_total"],
    { vm: id },
    "target_device",
    ["metrics.read", "metrics.written"],
  );

export const vmNics = (id: string): Source =>
  pair(
    ["libvirt_domain_interface_stats_receive_bytes_total", "libvirt_domain_interface_stats_transmit_bytes_total"],
    { vm: id },
    "target_device",
    ["metrics.received", "metrics.sent"],
  );

/** A pool's bytes in use as each node sees it (its size less its free space). */
export function poolUse(pool: string): Source {
  return async (w) => {
    const [size, free] = await Promise.all([
      history("heron_pool_size_bytes", { pool }, w),
      history("heron_pool_free_bytes", { pool }, w),
    ]);
    const left = byLabel(free, "node");
    return sorted(size.map((s) => difference(node(s.labels), s, left.get(node(s.labels)))));
  };
}

/**
 * Filesystem use in % of the nodes in `nodes` (all when null): of the filesystem holding each
 * of `paths` where they are known, else of every filesystem the node measures.
 */
export function filesystems(nodes: string[] | null, paths: string[]): Source {
  return async (w) => {
    const [size, avail] = await Promise.all([
      history("node_filesystem_size_bytes", {}, w),
      history("node_filesystem_avail_bytes", {}, w),
    ]);
    const where = (s: Series) => `${node(s.labels)} ${s.labels.mountpoint ?? ""}`;
    const free = new Map(avail.map((s) => [where(s), s]));
    const mine = size.filter((s) => nodes === null || nodes.includes(node(s.labels)));
    const shown = paths.length ? holding(mine, paths) : mine;
    return sorted(
      shown.map((s) => {
        const used = difference(where(s), s, free.get(where(s)));
        const sizes = new Map(s.points.map((p) => [p[0], p[2]]));
        const share = (v: number | null, at: number) => {
          const total = sizes.get(at);
          return v === null || !total ? null : (100 * v) / total;
        };
        return {
          ...used,
          points: used.points.map(
            ([at, lo, avg, hi]): Point => [at, share(lo, at), share(avg, at), share(hi, at)],
          ),
        };
      }),
    );
  };
}

/** Of each node's filesystems, those that hold one of `paths` (the longest mount point). */
function holding(series: Series[], paths: string[]): Series[] {
  const chosen = new Set<Series>();
  const perNode = new Map<string, Series[]>();
  for (const s of series) perNode.set(node(s.labels), [...(perNode.get(node(s.labels)) ?? []), s]);
  for (const own of perNode.values()) {
    for (const path of paths) {
      const under = own.filter((s) => inside(path, s.labels.mountpoint ?? ""));
      const best = under.sort((a, b) => (b.labels.mountpoint ?? "").length - (a.labels.mountpoint ?? "").length)[0];
      if (best) chosen.add(best);
    }
  }
  return [...chosen];
}

function inside(path: string, mountpoint: string): boolean {
  return mountpoint === "/" || path === mountpoint || path.startsWith(`${mountpoint}/`);
}

/** One chart of an object's panel (MetricsPanel.vue): its title and hint as dictionary keys,
 * the unit of its values, the lines it draws and its test id. */
export interface Chart {
  title: string;
  hint?: string;
  unit: Unit;
  source: Source;
  testid: string;
}

/** The charts of a node (its card on the Nodes page) and of a VM (its Metrics tab). A VM's
 * series carry its id, so they go on across migrations and restarts on other nodes. */
export const OBJECT_CHARTS: Record<"node" | "vm", (of: string) => Chart[]> = {
  node: (name) => [
    {
      title: "metrics.nodeCpu", hint: "metrics.nodeCpuHint", unit: "cpu", source: nodeCpu(name),
      testid: "chart-node-cpu",
    },
    { title: "metrics.load", unit: "number", source: nodeLoad(name), testid: "chart-node-load" },
    { title: "metrics.memory", unit: "bytes", source: nodeMemory(name), testid: "chart-node-memory" },
    { title: "metrics.disks", unit: "bytesPerSecond", source: nodeDisks(name), testid: "chart-node-disks" },
    { title: "metrics.network", unit: "bytesPerSecond", source: nodeNetwork(name), testid: "chart-node-network" },
  ],
  vm: (id) => [
    { title: "metrics.cpu", hint: "metrics.cpuHint", unit: "cpu", source: vmCpu(id), testid: "chart-vm-cpu" },
    { title: "metrics.memory", unit: "bytes", source: vmMemory(id), testid: "chart-vm-memory" },
    { title: "metrics.vmDisks", unit: "bytesPerSecond", source: vmDisks(id), testid: "chart-vm-disks" },
    { title: "metrics.vmNics", unit: "bytesPerSecond", source: vmNics(id), testid: "chart-vm-nics" },
  ],
};
