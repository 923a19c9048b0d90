// What one VM is made of, as the create forms ask for it: shared by the one-VM wizard and
// mass deployment, which differ only in how VMs are named and how many are made.
import { computed, reactive, type ComputedRef, type Ref } from "vue";
import { get } from "./api";
import { useLive } from "./live";
import type { Group, Node, Pool, Volume } from "./types";

export interface VmTemplate {
  vcpus: number;
  memory_mib: number;
  description: string;
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
} {
  const form = reactive<VmTemplate>({
    vcpus: 1,
    memory_mib: 256,
    description: "",
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
      vcpus: form.vcpus,
      memory_mib: form.memory_mib,
      description: form.description,
      disks,
      nics: form.network === "none" ? [] : [{ network: form.network, model: form.nicModel }],
      node: form.node || null,
      group: form.group || null,
      start: form.start,
    };
  });
  return { form, choices, body };
}
