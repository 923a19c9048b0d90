// What one VM is made of, as the create forms ask for it: shared by the one-VM wizard and
// mass deployment, which differ only in how VMs are named and how many are made.
import { computed, reactive, watch, type ComputedRef, type Ref } from "vue";
import { get } from "./api";
import { useLive } from "./live";
import { defaults, useFields, type Field } from "./schema";
import { newPolicy, policyBody, type NicPolicy } from "./secgroups";
import type { Group, Network, Node, Pool, SecurityGroup, Volume } from "./types";

/** The VMCreate fields drawn from the API's schema: a new one appears in the forms by itself. */
export const HARDWARE = ["vcpus", "memory_mib", "firmware", "machine", "description", "boot_order", "ha", "cloud_init"];

export interface VmTemplate {
  /** vcpus, memory, firmware, machine, description, boot order, HA: as the schema has them. */
  hardware: Record<string, unknown>;
  diskKind: "image" | "empty" | "none";
  source: string;
  pool: string;
  sizeGiB: number;
  bus: string;
  /** The network adapters, in order (net0, net1…). */
  nics: NicDraft[];
  node: string;
  group: string;
  start: boolean;
}

/** One adapter as the form edits it: empty MAC and address are the cluster's to give. */
export interface NicDraft {
  /** "user" (QEMU's NAT), "none" (no link), or a network's name. */
  network: string;
  model: string;
  mac: string;
  address: string;
  /** Its security groups and rate limits: only on a network of a switch. */
  policy: NicPolicy;
}

export function newNic(): NicDraft {
  return { network: "user", model: "virtio", mac: "", address: "", policy: newPolicy() };
}

/** QEMU's NAT and "no link" are neither filtered nor shaped: only a switch's networks are. */
export function filtered(network: string): boolean {
  return network !== "user" && network !== "none";
}

/** What the fields offer: pools that make volumes, free images, live nodes, groups, networks. */
export interface TemplateChoices {
  pools: Pool[];
  images: Volume[];
  nodes: Node[];
  groups: Group[];
  networks: Network[];
  /** The security groups' names, for the NICs to choose from. */
  securityGroups: string[];
}

export function useVmTemplate(start: boolean): {
  form: VmTemplate;
  choices: Ref<TemplateChoices>;
  body: ComputedRef<Record<string, unknown>>;
  hardwareFields: Ref<Field[]>;
  schemaError: Ref<unknown>;
} {
  const form = reactive<VmTemplate>({
    hardware: {},
    diskKind: "image",
    source: "",
    pool: "",
    sizeGiB: 1,
    bus: "virtio",
    nics: [newNic()],
    node: "",
    group: "",
    start,
  });

  const { data: choices } = useLive<TemplateChoices>(
    ["pools", "volumes", "nodes", "groups", "networks"],
    async () => {
      const [pools, nodes, groups, networks, securityGroups] = await Promise.all([
        get<Pool[]>("/pools"),
        get<Node[]>("/nodes"),
        get<Group[]>("/groups"),
        get<Network[]>("/networks"),
        get<SecurityGroup[]>("/security-groups"),
      ]);
      const images = (
        await Promise.all(pools.map((p) => get<Volume[]>(`/pools/${p.name}/volumes`)))
      )
        .flat()
        .filter((v) => v.state === "ready" && !v.attached_to && !v.state_of);
      // New disks go to pools that create volumes: LUN-backed ones hold what the array made.
      const creating = pools.filter((p) => p.type !== "iscsi" && p.type !== "block");
      if (!form.pool && creating.length) form.pool = creating[0].name;
      if (!form.source && images.length) form.source = `${images[0].pool}/${images[0].name}`;
      networks.sort((a, b) => a.name.localeCompare(b.name));
      const sgNames = securityGroups.map((g) => g.name).sort();
      return { pools: creating, images, nodes, groups, networks, securityGroups: sgNames };
    },
    { pools: [], images: [], nodes: [], groups: [], networks: [], securityGroups: [] },
  );

  const { fields: hardwareFields, error: schemaError } = useFields("POST /vms", HARDWARE);
  // The schema's defaults, but a small VM's memory to begin with.
  watch(hardwareFields, (now) => Object.assign(form.hardware, defaults(now), { memory_mib: 256 }), { once: true });

  // The VMCreate body but for its name.
  const body = computed(() => {
    const disks =
      form.diskKind === "none"
        ? []
        : [
            form.diskKind === "image"
              ? { pool: form.pool, source: form.source, bus: form.bus }
              : { pool: form.pool, size: Math.round(form.sizeGiB * 1073741824), bus: form.bus },
          ];
    return {
      ...form.hardware,
      disks,
      nics: form.nics.map((nic) => nicBody(nic, choices.value.networks)),
      node: form.node || null,
      group: form.group || null,
      start: form.start,
    };
  });
  return { form, choices, body, hardwareFields, schemaError };
}

/** A NIC of the request: MAC and address only when given (and an address only where the
 * network has a subnet to take it from); groups and rates only when given, on a switch's
 * network. */
export function nicBody(nic: NicDraft, networks: Network[]): Record<string, unknown> {
  const body: Record<string, unknown> = { network: nic.network, model: nic.model };
  if (nic.mac.trim()) body.mac = nic.mac.trim().toLowerCase();
  const subnet = networks.find((n) => n.name === nic.network)?.subnet;
  if (subnet && nic.address.trim()) body.address = nic.address.trim();
  return filtered(nic.network) ? { ...body, ...policyBody(nic.policy) } : body;
}
