// What one VM is made of, as the create forms ask for it: shared by the one-VM wizard and
// mass deployment, which differ only in how VMs are named and how many are made.
import { computed, reactive, watch, type ComputedRef, type Ref } from "vue";
import { get } from "./api";
import { useLive } from "./live";
import { defaults, useFields, type Field } from "./schema";
import type { Group, Node, Pool, Volume } from "./types";

/** The VMCreate fields drawn from the API's schema: a new one appears in the forms by itself. */
export const HARDWARE = ["vcpus", "memory_mib", "firmware", "machine", "description", "boot_order", "ha"];

export interface VmTemplate {
  /** vcpus, memory, firmware, machine, description, boot order, HA: as the schema has them. */
  hardware: Record<string, unknown>;
  diskKind: "image" | "empty" | "none";
  source: string;
  pool: string;
  sizeGiB: number;
  bus: string;
  network: "user" | "none";
  nicModel: string;
  node: string;
  group: string;
  start: boolean;
}

/** What the fields offer: pools that make volumes, free images, live nodes, groups. */
export interface TemplateChoices {
  pools: Pool[];
  images: Volume[];
  nodes: Node[];
  groups: Group[];
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
    network: "user",
    nicModel: "virtio",
    node: "",
    group: "",
    start,
  });

  const { data: choices } = useLive<TemplateChoices>(
    ["pools", "volumes", "nodes", "groups"],
    async () => {
      const [pools, nodes, groups] = await Promise.all([
        get<Pool[]>("/pools"),
        get<Node[]>("/nodes"),
        get<Group[]>("/groups"),
      ]);
      const images = (
        await Promise.all(pools.map((p) => get<Volume[]>(`/pools/${p.name}/volumes`)))
      )
        .flat()
        .filter((v) => v.state === "ready" && !v.attached_to);
      // New disks go to pools that create volumes: LUN-backed ones hold what the array made.
      const creating = pools.filter((p) => p.type !== "iscsi" && p.type !== "block");
      if (!form.pool && creating.length) form.pool = creating[0].name;
      if (!form.source && images.length) form.source = `${images[0].pool}/${images[0].name}`;
      return { pools: creating, images, nodes, groups };
    },
    { pools: [], images: [], nodes: [], groups: [] },
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
      nics: form.network === "none" ? [] : [{ network: form.network, model: form.nicModel }],
      node: form.node || null,
      group: form.group || null,
      start: form.start,
    };
  });
  return { form, choices, body, hardwareFields, schemaError };
}
