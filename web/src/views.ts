// The view registry: every page of the UI is one entry here (a path, a title key from the
// dictionaries, the component, whether it is in the menu, and the role it needs). Adding a
// view is adding an entry, its component and its dictionary keys.
import type { Component } from "vue";
import type { Key } from "./i18n";
import { can, canSomewhere, type Role } from "./session";

export interface ViewDef {
  path: string;
  name: string;
  title: Key;
  component: () => Promise<Component>;
  icon?: string;
  nav?: boolean;
  role?: Role;
  /** The role must be the user's cluster-wide role: a grant on a group is not enough. */
  clusterWide?: boolean;
  /** Shown alone, without the menu and the top bar (a console in its own window). */
  bare?: boolean;
}

/** Whether the current user may open `view`. */
export function allowed(view: Pick<ViewDef, "role" | "clusterWide">): boolean {
  if (!view.role) return true;
  return view.clusterWide ? can(view.role) : canSomewhere(view.role);
}

export const views: ViewDef[] = [
  { path: "/", name: "overview", title: "nav.overview", icon: "◎", nav: true,
    component: () => import("./views/OverviewView.vue") },
  { path: "/nodes", name: "nodes", title: "nav.nodes", icon: "▤", nav: true,
    component: () => import("./views/NodesView.vue") },
  { path: "/cluster", name: "cluster", title: "nav.cluster", icon: "⬡", nav: true,
    component: () => import("./views/ClusterView.vue") },
  { path: "/vms", name: "vms", title: "nav.vms", icon: "▣", nav: true,
    component: () => import("./views/VmsView.vue") },
  { path: "/vms/new", name: "vm-create", title: "create.title", role: "operator",
    component: () => import("./views/VmCreateView.vue") },
  { path: "/vms/:id/console", name: "vm-console", title: "console.title", role: "operator", bare: true,
    component: () => import("./views/VmConsoleView.vue") },
  { path: "/vms/batch", name: "vm-batch", title: "batch.title", role: "operator",
    component: () => import("./views/VmBatchView.vue") },
  { path: "/vms/:id", name: "vm", title: "vm.title",
    component: () => import("./views/VmDetailView.vue") },
  { path: "/groups", name: "groups", title: "nav.groups", icon: "⊞", nav: true,
    component: () => import("./views/GroupsView.vue") },
  { path: "/networks", name: "networks", title: "nav.networks", icon: "⇄", nav: true,
    component: () => import("./views/NetworksView.vue") },
  { path: "/security-groups", name: "security-groups", title: "nav.securityGroups", icon: "⊘", nav: true,
    component: () => import("./views/SecurityGroupsView.vue") },
  { path: "/dr", name: "dr", title: "nav.dr", icon: "⊛", nav: true,
    component: () => import("./views/DRView.vue") },
  { path: "/storage", name: "storage", title: "nav.storage", icon: "◫", nav: true,
    component: () => import("./views/StorageView.vue") },
  { path: "/imports", name: "imports", title: "nav.imports", icon: "⇲", nav: true, role: "admin", clusterWide: true,
    component: () => import("./views/ImportView.vue") },
  { path: "/tasks", name: "tasks", title: "nav.tasks", icon: "↻", nav: true,
    component: () => import("./views/TasksView.vue") },
  { path: "/alerts", name: "alerts", title: "nav.alerts", icon: "⚠", nav: true,
    component: () => import("./views/AlertsView.vue") },
  { path: "/events", name: "events", title: "nav.events", icon: "≡", nav: true,
    component: () => import("./views/EventsView.vue") },
  { path: "/access", name: "access", title: "nav.access", icon: "◈", nav: true,
    component: () => import("./views/AccessView.vue") },
];
