// The session: an API token from POST /auth/login, kept in sessionStorage (gone with the tab).
import { computed, reactive } from "vue";

export type Role = "viewer" | "operator" | "admin";
const RANK: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };
// What each role may do beyond the nesting of roles, as models/auth.py's ROLE_PERMISSIONS.
export type Permission = "read" | "console" | "operate" | "administer";
const PERMISSIONS: Record<Role, Permission[]> = {
  viewer: ["read"],
  operator: ["read", "console", "operate"],
  admin: ["read", "console", "operate", "administer"],
};
const KEY = "heron.session";

export type ScopeKind = "group" | "pool" | "switch";
export interface ScopedRole {
  scope: ScopeKind;
  name: string;
  role: Role;
}

interface Stored {
  token: string;
  tokenId: string;
  user: string;
  /** Cluster-wide; null: the user reaches only what its grants give. */
  role: Role | null;
  /** Roles granted on scopes (GET /auth/whoami), as far as the token carries them. */
  grants?: ScopedRole[];
}

function load(): Stored | null {
  try {
    const raw = sessionStorage.getItem(KEY);
    return raw ? (JSON.parse(raw) as Stored) : null;
  } catch {
    return null;
  }
}

export const session = reactive<{ current: Stored | null }>({ current: load() });

export const loggedIn = computed(() => session.current !== null);

export function start(stored: Stored): void {
  session.current = stored;
  sessionStorage.setItem(KEY, JSON.stringify(stored));
}

export function end(): void {
  session.current = null;
  sessionStorage.removeItem(KEY);
}

/** Whether the logged-in user's cluster-wide role includes `needed` (the API enforces it
 * anyway). */
export function can(needed: Role): boolean {
  const role = session.current?.role;
  return role !== undefined && role !== null && RANK[role] >= RANK[needed];
}

/** The user's role on an object in scope `kind` `name` (a VM: its group), as
 * models/auth.py effective_role: the highest of the cluster-wide role and the grants there. */
export function roleOn(kind: ScopeKind, name: string | null | undefined): Role | null {
  const current = session.current;
  if (!current) return null;
  let best = current.role;
  for (const grant of current.grants ?? []) {
    if (name && grant.scope === kind && grant.name === name && (best === null || RANK[grant.role] > RANK[best]))
      best = grant.role;
  }
  return best;
}

type Scoped = { spec: { group?: string | null } } | null | undefined;

/** Whether the user's role on this VM (its group's grants count) includes `needed`. */
export function canVm(vm: Scoped, needed: Role): boolean {
  const role = roleOn("group", vm?.spec.group);
  return role !== null && RANK[role] >= RANK[needed];
}

/** Whether the user's role on this VM carries `permission` (the console). */
export function mayVm(vm: Scoped, permission: Permission): boolean {
  const role = roleOn("group", vm?.spec.group);
  return role !== null && PERMISSIONS[role].includes(permission);
}

/** Whether the user has `needed` cluster-wide or on some scope of `kind` (to offer "new VM"
 * to an operator of a group). */
export function canSomewhere(needed: Role, kind: ScopeKind = "group"): boolean {
  return can(needed) || (session.current?.grants ?? []).some((g) => g.scope === kind && RANK[g.role] >= RANK[needed]);
}

/** A user without a cluster-wide role sees only these views (its VMs, their tasks, its
 * tokens); the others would only show refusals. */
export const SCOPED_VIEWS = new Set(["vms", "vm", "vm-create", "vm-console", "vm-batch", "tasks", "access"]);

/** Whether the logged-in user's role carries `permission` (the console: operators and admins). */
export function may(permission: Permission): boolean {
  const role = session.current?.role;
  return role !== undefined && role !== null && PERMISSIONS[role].includes(permission);
}
