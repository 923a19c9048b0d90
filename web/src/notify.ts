// Messages to the user: short notices, and confirmations before anything destructive.
import { reactive } from "vue";

export interface Notice {
  id: number;
  kind: "ok" | "error";
  text: string;
}

export const notices = reactive<Notice[]>([]);
let next = 1;

export function notify(text: string, kind: Notice["kind"] = "ok"): void {
  const notice = { id: next++, kind, text };
  notices.push(notice);
  // A notice fades after a while; errors stay until dismissed.
  if (kind === "ok") setTimeout(() => dismiss(notice.id), 5000);
}

export function dismiss(id: number): void {
  const index = notices.findIndex((n) => n.id === id);
  if (index >= 0) notices.splice(index, 1);
}

export interface Confirmation {
  title: string;
  text: string;
  action: string;
  resolve: (ok: boolean) => void;
}

export const pending = reactive<{ current: Confirmation | null }>({ current: null });

/** Ask before doing something that cannot be undone; resolves true if confirmed. */
export function confirm(title: string, text: string, action: string): Promise<boolean> {
  return new Promise((resolve) => {
    pending.current?.resolve(false);
    pending.current = { title, text, action, resolve };
  });
}
