// Live updates: GET /api/v1/stream (server-sent events), read with fetch so that the bearer
// token travels in a header, not in a URL. Views subscribe to the kinds they show and reload.
import { onBeforeUnmount, onMounted, ref, type Ref } from "vue";
import { API } from "./api";
import { busy } from "./busy";
import { end, session } from "./session";

export type Kind =
  | "vms"
  | "nodes"
  | "tasks"
  | "pools"
  | "volumes"
  | "groups"
  | "networks"
  | "network-status"
  | "settings"
  | "tokens"
  | "users"
  | "events"
  | "snapshots"
  | "alerts"
  | "alert-rules"
  | "channels"
  | "imports"
  | "dr";

type Listener = (kinds: Set<string>) => void;
const listeners = new Set<Listener>();
export const connected = ref(false);
let controller: AbortController | null = null;

function dispatch(kinds: Set<string>): void {
  // Every change is audited, so the audit log ("events") changes with anything else.
  kinds.add("events");
  for (const listener of listeners) listener(kinds);
}

function handle(event: string, data: string): void {
  if (event === "expired") {
    end();
    return;
  }
  if (event !== "change") return;
  const changes = (JSON.parse(data) as { changes: { kind: string }[] }).changes;
  const kinds = new Set(changes.map((c) => c.kind));
  if (kinds.has("resync")) {
    dispatch(
      new Set([
        "vms", "nodes", "tasks", "pools", "volumes", "groups", "networks", "network-status", "settings", "tokens",
        "users", "alerts", "alert-rules", "channels", "imports",
      ]),
    );
  } else {
    dispatch(kinds);
  }
}

async function run(signal: AbortSignal): Promise<void> {
  let backoff = 500;
  while (!signal.aborted && session.current) {
    try {
      const reply = await fetch(`${API}/stream`, {
        headers: { authorization: `Bearer ${session.current.token}`, accept: "text/event-stream" },
        signal,
      });
      if (reply.status === 401) {
        end();
        return;
      }
      if (!reply.ok || !reply.body) throw new Error(String(reply.status));
      connected.value = true;
      backoff = 500;
      // Whatever happened while we were away: everyone reloads once.
      dispatch(
        new Set([
          "vms", "nodes", "tasks", "pools", "volumes", "networks", "network-status", "tokens", "users", "alerts",
          "alert-rules", "channels", "imports",
        ]),
      );
      const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut: number;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let event = "message";
          const data: string[] = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).trim());
          }
          if (data.length) handle(event, data.join("\n"));
        }
      }
    } catch {
      /* dropped or refused: try again below */
    }
    connected.value = false;
    if (signal.aborted) return;
    await new Promise((resolve) => setTimeout(resolve, backoff)); // reconnect back-off
    backoff = Math.min(backoff * 2, 5000);
  }
}

export function startLive(): void {
  stopLive();
  controller = new AbortController();
  void run(controller.signal);
}

export function stopLive(): void {
  controller?.abort();
  controller = null;
  connected.value = false;
}

/**
 * Data that reloads itself: `load` runs on mount and again (coalesced) whenever one of
 * `kinds` changes in the cluster.
 */
export function useLive<T>(
  kinds: Kind[],
  load: () => Promise<T>,
  initial: T,
): { data: Ref<T>; error: Ref<unknown>; loading: Ref<boolean>; reload: () => Promise<void> } {
  const data = ref(initial) as Ref<T>;
  const error = ref<unknown>(null);
  const loading = ref(true);
  let running = false;
  let again = false;

  function reload(): Promise<void> {
    return busy(reloadNow);
  }

  async function reloadNow(): Promise<void> {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        try {
          data.value = await load();
          error.value = null;
        } catch (failure) {
          error.value = failure;
        }
      } while (again);
    } finally {
      running = false;
      loading.value = false;
    }
  }

  const listener: Listener = (changed) => {
    if (kinds.some((kind) => changed.has(kind))) void reload();
  };
  onMounted(() => {
    listeners.add(listener);
    void reload();
  });
  onBeforeUnmount(() => listeners.delete(listener));
  return { data, error, loading, reload };
}
