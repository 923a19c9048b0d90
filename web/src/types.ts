// Shapes of the API's replies the UI reads (see docs/api.md).
import type { Role } from "./session";

export interface Node {
  name: string;
  address: string;
  api_url: string;
  cpus: number;
  memory_mib: number;
  accelerator: string;
  state: string;
  leader: boolean;
  vms: number;
  memory_used_mib: number;
  vcpus_used: number;
  maintenance: boolean;
  started_at: number;
  /** Cores and memory the admin reserved for heron-io (not for VMs). */
  io_cpus: number;
  io_memory_mib: number;
  /** Taken out of the cluster for good (its agent may still run). */
  left?: boolean;
}

export interface Cluster {
  leader: string | null;
  nodes: number;
  vms: number;
  version: string;
}

export interface VMStatus {
  state: string;
  node: string;
  pid: number | null;
  vnc: string | null;
  accelerator: string | null;
  message: string;
  updated_at: number;
  /** null: the running QEMU has no guest agent channel. */
  guest_agent?: { connected: boolean; version: string | null } | null;
}

/** A disk's I/O limits; null: no limit. */
export interface DiskQoS {
  iops: number | null;
  iops_burst: number | null;
  mbps: number | null;
  mbps_burst: number | null;
}

export interface VM {
  id: string;
  name: string;
  node: string;
  power: string;
  state: string;
  revision: number;
  created_at: number;
  status: VMStatus | null;
  /** Hardware fields changed since its QEMU started: they apply at its next start. */
  pending: string[];
  /** In the reply to a change: the task giving the running VM what it can take at once. */
  task?: string | null;
  /** A template: it never starts; VMs are cloned from it. */
  template: boolean;
  /** Its live migration under way, or one its target has not closed yet (no other move begins). */
  migration?: { source: string; target: string; state: string; error: string; created_at: number } | null;
  spec: {
    name: string;
    vcpus: number;
    memory_mib: number;
    max_vcpus?: number | null;
    max_memory_mib?: number | null;
    layout?: number;
    firmware: string;
    machine: string;
    boot_order: string[];
    description: string;
    ha: { enabled: boolean; priority: number };
    group: string | null;
    disks: { bus: string; volume: string; slot?: number | null; qos?: DiskQoS }[];
    nics: Nic[];
  };
}

/** Pool types the API knows; LUN-backed ones (iscsi, block) get their volumes by a scan. */
export type PoolType = "dir" | "nfs" | "iscsi" | "block" | "rbd" | "ardfs";

/** How an ardfs pool keeps its blocks: copies (rf) or erasure coding (ec data+parity). */
export type Protection = "rf1" | "rf2" | "rf3" | "ec2+1" | "ec3+1";

/** The kind of device an ardfs disk is on; a pool may place its volumes on one kind only. */
export type DeviceClass = "nvme" | "ssd" | "hdd";

export interface Pool {
  name: string;
  type: string;
  path: string | null;
  shared: boolean;
  server?: string | null;
  export?: string | null;
  options?: string | null;
  portal?: string | null;
  target?: string | null;
  pattern?: string | null;
  rbd_pool?: string | null;
  monitors?: string[];
  user?: string | null;
  conf?: string | null;
  protection?: string;
  device_class?: DeviceClass | null;
  created_at: number;
}

/** A directory of a node that an ardfs pool keeps its chunks in. */
export interface ArdfsDisk {
  id: string;
  path: string;
  weight: number;
  /** null: not told yet (its node's agent detects it from the kernel). */
  device_class?: DeviceClass | null;
  /** detected (the kernel), assumed (the kernel could not tell), set (an administrator). */
  class_source?: "detected" | "assumed" | "set" | null;
  class_note?: string;
}

/** A node's part in an ardfs pool: its heron-io's address and the disks it gives. */
export interface ArdfsMember {
  pool: string;
  node: string;
  site: string;
  address: string | null;
  disks: ArdfsDisk[];
}

/** What a pool scan found: volume names. */
export interface ScanResult {
  added: string[];
  resized: string[];
  missing: string[];
}

export interface VolumeHealth {
  state: string;
  stale_chunks: number;
  move_left: number;
}

export interface IscsiExport {
  volume: string;
  pool: string;
  volume_name: string;
  node: string;
  iqn: string;
  chap_user: string;
  initiators: string[];
  state: "pending" | "serving" | "failed";
  portal: string | null;
  error: string | null;
  chap_secret?: string | null;
}

export interface Volume {
  id: string;
  pool: string;
  name: string;
  format: string;
  size: number;
  /** ardfs: the class of disk it asks for; null: its pool's. */
  device_class?: DeviceClass | null;
  node: string | null;
  location?: string;
  owner?: string | null;
  epoch?: number;
  health?: VolumeHealth | null;
  placement?: PlacedDisk[] | null;
  moving_to?: PlacedDisk[] | null;
  layers?: { id: string; parent: string | null; snapshot: string | null; volume: string | null; merging: boolean }[];
  origin?: { volume: string; snapshot: string | null; linked: boolean } | null;
  state_of?: { vm: string; snapshot: string } | null;
  state: string;
  error: string;
  allocation: number | null;
  attached_to: string | null;
  created_at: number;
}

export interface Task {
  id: string;
  kind: string;
  node: string;
  target: string;
  user: string;
  state: string;
  progress: number;
  log: string[];
  result?: Record<string, unknown> | null;
  error: string | null;
  cancel_requested: boolean;
  created_at: number;
  updated_at: number;
}

export interface AuditEntry {
  time: number;
  node: string;
  user: string | null;
  method: string;
  path: string;
  status: number;
  result: string;
  client: string | null;
  target: string | null;
}

export interface Grant {
  id: string;
  user: string;
  role: Role;
  scope: "group" | "pool" | "switch";
  name: string;
  created_at: number;
}

export interface User {
  name: string;
  role: Role | null;
  created_at: number;
}

export interface Lockout {
  id: string;
  kind: "user" | "address";
  subject: string;
  failures: number;
  last_at: number;
  locked_until: number | null;
}

export interface Token {
  id: string;
  user: string;
  role: Role | null;
  kind: string;
  description: string;
  created_at: number;
  expires_at: number | null;
}

export interface TaskRef {
  task: string;
  vm?: string | null;
  volume?: string | null;
}

/** A VM group: where its members may run, and the HA of members without their own. */
export interface Group {
  name: string;
  placement: "none" | "spread" | "together";
  strict: boolean;
  ha: { enabled: boolean; priority: number } | null;
  created_at: number;
}

/** POST /vms/batch: where each VM goes (dry run), or the VM and task made for it. */
export interface BatchItem {
  name: string;
  node: string;
  vm: string | null;
  task: string | null;
}

export interface BatchReply {
  dry_run: boolean;
  vms: BatchItem[];
}

/** A disk an ardfs volume's blocks are placed over. */
export interface PlacedDisk {
  id: string;
  node: string;
}

/** A VM's network adapter as its spec has it; the cluster fills in the MAC and the address. */
export interface Nic {
  model: string;
  network: string;
  mac: string | null;
  address?: string | null;
  link_up?: boolean;
  security_groups?: string[];
  ingress_mbps?: number | null;
  egress_mbps?: number | null;
}

export type RuleDirection = "in" | "out";

/** What a security group lets through (see the API's Rule). */
export interface SecurityRule {
  direction: RuleDirection;
  protocol: "any" | "tcp" | "udp" | "icmp";
  ports: string | null;
  remote: string | null;
  remote_group: string | null;
  description: string;
}

export interface SecurityGroup {
  name: string;
  description: string;
  rules: SecurityRule[];
  created_at: number;
}

export interface Switch {
  name: string;
  backend: string;
  mtu: number;
  /** node → its interface carrying the switch's VLANs. */
  uplinks: Record<string, string>;
  description: string;
  created_at: number;
}

export interface Subnet {
  cidr: string;
  gateway: string | null;
  dns: string[];
  ranges: { first: string; last: string }[];
  dhcp: boolean;
  lease_seconds: number;
}

export type NetworkKind = "untagged" | "vlan" | "trunk" | "vxlan";

export interface Network {
  name: string;
  switch: string;
  kind: NetworkKind;
  vlan: number | null;
  trunk: string[];
  vni: number | null;
  mtu: number | null;
  subnet: Subnet | null;
  description: string;
  created_at: number;
}

export interface SwitchState {
  in_sync: boolean;
  problems: string[];
  ports: number;
  repaired?: string[];
  repaired_at?: number | null;
}

export interface NodeNetworkStatus {
  node: string;
  switches: Record<string, SwitchState>;
  underlay: string | null;
  updated_at: number;
  node_up?: boolean;
}

export interface GuestHook {
  name: string;
  size: number;
  executable: boolean;
  sha256: string;
}

export interface GuestHookList {
  vm: string;
  runner: boolean;
  hooks: GuestHook[];
}
