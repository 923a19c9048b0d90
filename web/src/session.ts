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

interface Stored {
  token: string;
  tokenId: string;
  user: string;
  role: Role;
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

/** Whether the logged-in user's role includes `needed` (the API enforces it anyway). */
export function can(needed: Role): boolean {
  const role = session.current?.role;
  return role !== undefined && RANK[role] >= RANK[needed];
}

/** Whether the logged-in user's role carries `permission` (the console: operators and admins). */
export function may(permission: Permission): boolean {
  const role = session.current?.role;
  return role !== undefined && PERMISSIONS[role].includes(permission);
}
