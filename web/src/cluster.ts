// The cluster as a whole, as the API returns it (GET /cluster/members, /cluster/drs,
// /cluster/join, POST /nodes/{name}/leave): kept apart from types.ts, which every view shares.

export interface EtcdMember {
  id: string;
  name: string;
  peer_urls: string[];
  client_urls: string[];
  learner: boolean;
  leader: boolean;
}

export interface DrsSettings {
  mode: "off" | "advise" | "automatic";
  enabled: boolean;
  basis: "demand" | "allocated";
  threshold: number;
  interval: number;
  hysteresis: number;
  max_concurrent: number;
}

export interface NodeLoadView {
  node: string;
  memory_mib: number;
  memory_used_mib: number;
  load: number;
  maintenance: boolean;
  cpus: number;
  cpu_demand: number | null;
  memory_demand_mib: number | null;
}

export interface DrsProposal {
  vm: string;
  vm_name: string;
  memory_mib: number;
  source: string;
  destination: string;
  spread_after: number;
  explanation: string;
  cpu_demand: number | null;
  memory_demand_mib: number | null;
}

export interface DrsDecision {
  time: number;
  node: string;
  vm: string;
  vm_name: string | null;
  source: string | null;
  destination: string | null;
  reason: string;
  task: string | null;
}

export interface DrsStatus {
  settings: DrsSettings;
  basis: "demand" | "allocated";
  basis_note: string | null;
  loads: NodeLoadView[];
  spread: number;
  exceeded: boolean;
  proposal: DrsProposal | null;
  why_none: string | null;
  decisions: DrsDecision[];
}

export interface JoinCommand {
  kind: "client" | "etcd-capable";
  description: string;
  command: string;
}

export interface JoinInstructions {
  etcd_endpoints: string[];
  commands: JoinCommand[];
  etcd_tls: boolean;
  token: string | null;
  expires_at: number | null;
  api_url: string | null;
  ca_fingerprint: string | null;
}

export interface ArdfsLeave {
  pool: string;
  protection: string;
  disks: string[];
  volumes: number;
  disks_left: number;
  disks_needed: number;
  outcome: "none" | "rebuilt" | "copied-off" | "lost" | "degraded";
  blocking: boolean;
  message: string;
}

export interface LeavePlan {
  node: string;
  live: boolean;
  can_leave: boolean;
  blockers: { kind: "vms" | "only-voter" | "ardfs"; message: string }[];
  vms: string[];
  etcd_member: boolean;
  only_voter: boolean;
  ardfs: ArdfsLeave[];
  local_volumes: { pool: string; id: string; name: string }[];
}

export interface LeaveReply {
  node: string;
  dry_run: boolean;
  etcd_member_removed: boolean;
  plan: LeavePlan;
}

/** A share (0.25) as a percentage with one decimal where it matters ("25 %", "0.5 %"). */
export function percent(share: number): string {
  const value = share * 100;
  return `${value >= 10 || value === 0 ? value.toFixed(0) : value.toFixed(1)} %`;
}
