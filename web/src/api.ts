// The REST API client: bearer token, JSON, and the API's one error shape.
import { busy } from "./busy";
import { end, session } from "./session";

export const API = "/api/v1";

export interface FieldError {
  field: string;
  reason: string;
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
    public fields: FieldError[] = [],
  ) {
    super(message);
  }
}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const token = session.current?.token;
  return token ? { authorization: `Bearer ${token}`, ...extra } : extra;
}

async function failure(reply: Response): Promise<ApiError> {
  let body: { error?: string; message?: string; fields?: FieldError[] } = {};
  try {
    body = await reply.json();
  } catch {
    /* not JSON: a proxy or a crash; the status says enough */
  }
  if (reply.status === 401 && session.current) end();
  return new ApiError(
    reply.status,
    body.error ?? "error",
    body.message ?? `${reply.status} ${reply.statusText}`,
    body.fields ?? [],
  );
}

export function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  return busy(() => send<T>(method, path, body));
}

async function send<T>(method: string, path: string, body?: unknown): Promise<T> {
  const reply = await answer(method, path, body);
  return (reply.status === 204 ? null : await reply.json()) as T;
}

/** The reply to a request that succeeded (its headers too); an ApiError otherwise. */
async function answer(method: string, path: string, body?: unknown): Promise<Response> {
  const init: RequestInit = { method, headers: headers() };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = headers({ "content-type": "application/json" });
  }
  let reply: Response;
  try {
    reply = await fetch(API + path, init);
  } catch (error) {
    throw new ApiError(0, "network", String(error));
  }
  if (!reply.ok) throw await failure(reply);
  return reply;
}

export const get = <T>(path: string) => request<T>("GET", path);
/** A document the API serves as plain text (a MIB). */
export const getText = (path: string) => busy(async () => (await answer("GET", path)).text());
/** A file the API serves (a support bundle), saved by the browser under `filename`. */
export const download = (path: string, filename: string) =>
  busy(async () => {
    const blob = await (await answer("GET", path)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = filename;
    link.click();
    URL.revokeObjectURL(link.href);
  });
export const post = <T>(path: string, body?: unknown) => request<T>("POST", path, body ?? {});
export const put = <T>(path: string, body: unknown) => request<T>("PUT", path, body);
export const del = <T>(path: string) => request<T>("DELETE", path);

/**
 * Every item of a paged list (`GET /vms`): pages of `limit`, each next one asked for with the
 * token the previous reply carried in `X-Continue`, until a reply carries none.
 */
export function getAll<T>(path: string, limit = 500): Promise<T[]> {
  return busy(async () => {
    const items: T[] = [];
    let cursor: string | null = null;
    do {
      const query = new URLSearchParams({ limit: String(limit) });
      if (cursor) query.set("continue", cursor);
      const reply = await answer("GET", `${path}${path.includes("?") ? "&" : "?"}${query}`);
      items.push(...((await reply.json()) as T[]));
      cursor = reply.headers.get("X-Continue");
    } while (cursor);
    return items;
  });
}

/** A multipart upload with progress (fetch cannot report upload progress; XHR can). */
export function upload<T>(
  path: string,
  form: FormData,
  progress: (fraction: number) => void,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", API + path);
    for (const [name, value] of Object.entries(headers())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) progress(event.loaded / event.total);
    };
    xhr.onerror = () => reject(new ApiError(0, "network", "upload failed"));
    xhr.onload = async () => {
      const reply = new Response(xhr.responseText, { status: xhr.status });
      if (xhr.status >= 200 && xhr.status < 300) resolve(JSON.parse(xhr.responseText) as T);
      else reject(await failure(reply));
    };
    xhr.send(form);
  });
}
