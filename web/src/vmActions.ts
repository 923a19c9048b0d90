// What can be done to a VM, in one place for the VM list (one row, or many rows at once) and
// the VM's own page: which actions its desired power allows, which ones ask first, which API
// operation each one is (the `data-op` of its button), and sending it.
import { ApiError, del, post } from "./api";
import { t } from "./i18n";
import { confirm } from "./notify";
import type { Node, TaskRef, VM } from "./types";

export type PowerAction = "start" | "shutdown" | "stop" | "reboot" | "pause" | "resume";
export type VmAction = PowerAction | "migrate" | "delete";

/** The power actions a VM's desired power allows, in the order they are offered. */
export function powerActions(vm: Pick<VM, "power"> & { template?: boolean }): PowerAction[] {
  if (vm.template) return []; // a template never starts
  if (vm.power === "paused") return ["resume", "stop"];
  if (vm.power === "running") return ["shutdown", "reboot", "pause", "stop"];
  return ["start"];
}

/** Everything one VM's menu offers: its power actions, a live move (running or paused),
 * deletion. */
export function vmActions(vm: Pick<VM, "power"> & { template?: boolean }): VmAction[] {
  const moves: VmAction[] = vm.power === "stopped" ? [] : ["migrate"];
  return [...powerActions(vm), ...moves, "delete"];
}

/** The actions that lose the guest's unsaved work or the VM itself: they ask first. */
export const DESTRUCTIVE: ReadonlySet<VmAction> = new Set(["shutdown", "stop", "reboot", "delete"]);

/** The API operation of an action, as the OpenAPI schema names it (a button's `data-op`). */
export function operation(action: VmAction): string {
  if (action === "delete") return "DELETE /vms/{ref}";
  if (action === "migrate") return "POST /vms/{ref}/actions/migrate";
  return "POST /vms/{ref}/actions/{action}";
}

export interface ActionOptions {
  /** migrate: the node to move to; the cluster chooses when it is not given. */
  target?: string;
  /** delete: the VM's volumes go too. */
  volumes?: boolean;
}

/** Send one action for one VM; the API's refusal comes back as an ApiError. */
export function perform(vm: Pick<VM, "id">, action: VmAction, options: ActionOptions = {}): Promise<TaskRef> {
  const ref = encodeURIComponent(vm.id);
  if (action === "delete") return del<TaskRef>(`/vms/${ref}?volumes=${options.volumes === true}`);
  if (action === "migrate") {
    return post<TaskRef>(`/vms/${ref}/actions/migrate`, options.target ? { target: options.target } : {});
  }
  return post<TaskRef>(`/vms/${ref}/actions/${action}`);
}

/** Where a VM on `from` can move: an online node other than its own (maintenance takes none). */
export function migrationTargets(nodes: Node[], from?: string): Node[] {
  return nodes.filter((n) => n.name !== from && n.state === "online" && !n.maintenance);
}

/** An action's name on a button or in a menu. */
export function actionLabel(action: VmAction): string {
  return action === "migrate" ? t("bulk.migrate") : t(`vm.action.${action}`);
}

/** "1 VM", "3 VMs": what a confirmation or a notice names. */
export function vmCount(count: number): string {
  return t(count === 1 ? "bulk.vms.one" : "bulk.vms.other", { count });
}

/**
 * Ask before a destructive action on these VMs (naming one by its name, more by their number);
 * true at once for the others.
 */
export async function confirmAction(
  vms: Pick<VM, "name">[],
  action: VmAction,
  options: ActionOptions = {},
): Promise<boolean> {
  if (!DESTRUCTIVE.has(action)) return true;
  const name = vms.length === 1 ? vms[0].name : vmCount(vms.length);
  let text = t(`vm.confirmText.${action}`);
  if (action === "delete") text += ` ${t(options.volumes ? "bulk.volumesGo" : "bulk.volumesStay")}`;
  if (vms.length > 1) text += ` ${t("bulk.which", { names: vms.map((vm) => vm.name).join(", ") })}`;
  return confirm(t(`vm.confirm.${action}`, { name }), text, actionLabel(action));
}

export interface Outcome {
  vm: VM;
  /** The task that carries the action out, when the API accepted it. */
  task: string | null;
  /** Why the API refused it (status and message as they came). */
  error: ApiError | null;
}

/**
 * One action on many VMs, a few requests at a time: every VM gets its own answer, and one
 * refusal stops none of the others.
 */
export async function performAll(
  vms: VM[],
  action: VmAction,
  options: ActionOptions = {},
  parallel = 8,
): Promise<Outcome[]> {
  const outcomes: Outcome[] = new Array(vms.length);
  let next = 0;
  async function worker(): Promise<void> {
    while (next < vms.length) {
      const index = next++;
      const vm = vms[index];
      try {
        const reply = await perform(vm, action, options);
        outcomes[index] = { vm, task: reply.task, error: null };
      } catch (failure) {
        const error =
          failure instanceof ApiError ? failure : new ApiError(0, "error", String(failure));
        outcomes[index] = { vm, task: null, error };
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, vms.length) }, worker));
  return outcomes;
}
