// V2V imports as the API gives them (models/v2v.py, models/imports.py): sources, the VMs a
// scan found with what stops or changes their import, and the import request and its plan.
import type { Task } from "./types";

export interface ImportSource {
  name: string;
  type: "directory" | "nfs" | "vsphere";
  path: string | null;
  node: string | null;
  server: string | null;
  host: string | null;
  port: number;
  user: string | null;
  /** "set" when a password is stored: the API never shows it. */
  password: "set" | null;
  /** The pinned SHA-256 fingerprint of a vsphere server's certificate (hex). */
  fingerprint: string | null;
  created_at: number;
  created_by: string;
}

export interface Finding {
  code: string;
  message: string;
  device: string | null;
}

export interface ScannedDisk {
  device: string;
  file: string;
  format: string | null;
  subformat: string | null;
  capacity: number | null;
  bus: string;
}

export interface ScannedNic {
  device: string;
  mac: string | null;
  mac_kind: string | null;
  network: string | null;
  model: string | null;
  connected: boolean;
}

export interface ScannedVm {
  kind: "vmware" | "hyperv" | "ovf";
  path: string;
  name: string;
  vcpus: number | null;
  memory_mib: number | null;
  firmware: "bios" | "uefi" | null;
  secure_boot: boolean | null;
  guest_os: { id: string | null; family: "linux" | "windows" | "other" };
  disks: ScannedDisk[];
  nics: ScannedNic[];
  blockers: Finding[];
  warnings: Finding[];
}

export interface ScanResult {
  source: string;
  node: string;
  scanned_at: number;
  report: {
    root: string;
    vms: ScannedVm[];
    failures: { path: string; reason: string }[];
    notes: string[];
  };
}

export interface ImportedVm {
  vm: string;
  name: string;
  node: string;
  task: string;
  disks: string[];
  warnings: string[];
}

export interface ImportReply {
  dry_run: boolean;
  vms: ImportedVm[];
}

/** A task as GET /tasks lists it, with its parameters (a v2v.import's source and VM path). */
export type ImportTask = Task & { params?: { source?: string; vm?: string } };

/** One scanned VM: a file may describe several (an OVF), so its path and its name. */
export function vmKey(vm: ScannedVm): string {
  return `${vm.path}\u0000${vm.name}`;
}

/** The name the API gives a VM imported without one (services/imports.py heron_name). */
export function heronName(text: string): string {
  let name = text.toLowerCase().replace(/[^a-z0-9._-]+/g, "-").replace(/^[-._]+|[-._]+$/g, "");
  name = name.replace(/-{2,}/g, "-").slice(0, 63).replace(/^[-._]+|[-._]+$/g, "");
  return name || "imported";
}

/** The source networks of some VMs' NICs ("" for a NIC the source left unconnected). */
export function sourceNetworks(vms: ScannedVm[]): string[] {
  return [...new Set(vms.flatMap((vm) => vm.nics.map((nic) => nic.network ?? "")))].sort();
}

/** Where a source is, as its administrator wrote it. */
export function where(source: ImportSource): string {
  if (source.type === "vsphere") return `${source.user}@${source.host}:${source.port}`;
  return source.server ? `${source.server}:${source.path}` : (source.path ?? "");
}
