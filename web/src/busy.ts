// How many API requests and view loads are under way: the browser tests wait for zero
// (window.__heronBusy) before they read what a view shows.
let count = 0;

export async function busy<T>(work: () => Promise<T>): Promise<T> {
  count += 1;
  try {
    return await work();
  } finally {
    count -= 1;
  }
}

Object.defineProperty(window, "__heronBusy", { get: () => count });
