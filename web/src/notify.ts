// Messages to the user: short notices, and confirmations before anything destructive.
import { reactive } from "vue";
import { ApiError } from "./api";

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

/** What came of an action on one item of a list (a channel's test notice, a bundle mailed):
 * said beside the item until the action runs again, with the server's reason when it failed. */
export interface Outcome {
  ok: boolean;
  text: string;
}

export function useOutcomes(): {
  outcomes: Record<string, Outcome>;
  running: Record<string, boolean>;
  attempt: <T>(
    name: string,
    action: () => Promise<T>,
    done: (reply: T) => string,
    failed: (reason: string) => string,
  ) => Promise<void>;
} {
  const outcomes = reactive<Record<string, Outcome>>({});
  const running = reactive<Record<string, boolean>>({});
  async function attempt<T>(
    name: string,
    action: () => Promise<T>,
    done: (reply: T) => string,
    failed: (reason: string) => string,
  ): Promise<void> {
    delete outcomes[name];
    running[name] = true;
    try {
      outcomes[name] = { ok: true, text: done(await action()) };
    } catch (failure) {
      outcomes[name] = { ok: false, text: failed(failure instanceof ApiError ? failure.message : String(failure)) };
    } finally {
      running[name] = false;
    }
  }
  return { outcomes, running, attempt };
}
