"""Helpers shared by the tests: waiting on conditions, the API, the CLI and etcd."""

import asyncio
import concurrent.futures
import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import websockets.asyncio.client
from websockets.typing import Subprotocol

from heron.configdb import keys
from heron.devcluster import DevCluster
from heron.testguest import console
from heron.util.proc import command_lines
from heron.util.wait import until, until_sync

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
HERON = [sys.executable, "-m", "heron.cli.main"]


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll until `predicate` returns something truthy; fail with `what` after `timeout`."""
    value = until_sync(predicate, timeout, interval)
    if value is None:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return value


async def eventually(
    predicate: Callable[[], Awaitable[T | None]], timeout: float, what: str, interval: float = 0.1
) -> T:
    """The async twin of wait_for: poll until truthy, fail after `timeout`."""
    value = await until(predicate, timeout, interval)
    if value is None:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return value


class Api:
    """A thin client for tests: returns replies, never raises on HTTP errors.

    `tls`: what the node's certificate is checked with, a devcluster's `tls()` (its CA).
    """

    def __init__(self, url: str, token: str | None, tls: ssl.SSLContext | bool = True):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self.token = token
        self.tls = tls
        self.http = httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=60, verify=tls)

    def as_token(self, token: str | None) -> "Api":
        """The same node, as another principal."""
        return Api(self.url, token, self.tls)

    def __getattr__(self, method: str) -> Callable[..., httpx.Response]:
        return getattr(self.http, method)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = self.http.request(method, path, **kwargs)
        assert reply.status_code < 300, f"{method} {path}: {reply.status_code} {reply.text}"
        return reply.json() if reply.content else None

    def wait_task(self, task_id: str, timeout: float = 120) -> dict[str, Any]:
        task = self.task_end(task_id, timeout)
        assert task["state"] == "succeeded", task
        return task

    def task_end(self, task_id: str, timeout: float = 120) -> dict[str, Any]:
        """The task once it has ended, however it ended."""

        def finished() -> dict[str, Any] | None:
            task = self.ok("GET", f"/tasks/{task_id}")
            return task if task["state"] in ("succeeded", "failed", "cancelled") else None

        return wait_for(finished, timeout, f"task {task_id}")

    def vm(self, ref: str) -> dict[str, Any]:
        return self.ok("GET", f"/vms/{ref}")


def websocket_first_message(
    url: str, tls: ssl.SSLContext, subprotocols: list[str] | None = None, timeout: float = 30
) -> bytes:
    """Open a wss console and return the first message it sends (websockets' InvalidStatus
    when the node refuses the handshake). The asyncio client, not the threaded one: that one
    reads and writes one SSLSocket from two threads, which OpenSSL does not allow, and now
    and then loses a connection that the node answered."""

    async def first() -> bytes:
        protocols = [Subprotocol(p) for p in subprotocols] if subprotocols else None
        async with websockets.asyncio.client.connect(
            url, ssl=tls, subprotocols=protocols, open_timeout=timeout
        ) as ws:
            data = await asyncio.wait_for(ws.recv(), timeout)
            return data if isinstance(data, bytes) else data.encode()

    # On a thread of its own: the browser tests' synchronous Playwright keeps an event loop
    # marked running on this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, first()).result()


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*HERON, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )
    if check:
        assert result.returncode == 0, f"heron {' '.join(args)}: {result.stderr}"
    return result


def serial_lines(console_log: Path, pattern: str) -> list[str]:
    try:
        text = console_log.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if re.search(pattern, line)]


def guest_intact(
    log: Path, *, booted_here: bool = False, last_tick: int | None = None, timeout: float = 60
) -> console.GuestReport:
    """Wait until the test guest has checked all of its memory twice in `log` (its console on
    the node it runs on now), then fail on anything wrong there: a word of memory that is not
    what it wrote, a kernel complaint, a new boot, a counter that does not go on from
    `last_tick` (the last it printed before it moved)."""

    def checked() -> console.GuestReport | None:
        report = console.read_log(log, booted_here=booted_here)
        return report if report.problems or report.verifications >= 2 else None

    report = wait_for(checked, timeout, f"two memory checks in {log}")
    report.problems += console.follows(last_tick, report)
    assert report.intact, f"the guest is not whole after all: {report.problems[:10]}"
    return report


def etcd_snapshot(cluster: DevCluster) -> dict[str, tuple[bytes, int]]:
    """Every key with its value and last-modified revision: to prove nothing was written.

    The leader's key is the one exception to "an idle cluster writes nothing": its heartbeat
    re-writes the same value several times a second, so only its value is compared.
    """

    async def read() -> dict[str, tuple[bytes, int]]:
        async with cluster.configdb() as db:
            result = await db.client.get_prefix(b"/")
            return {
                kv.key.decode(): (
                    kv.value,
                    0 if kv.key.decode() == keys.LEADER else kv.mod_revision,
                )
                for kv in result
            }

    return asyncio.run(read())


def _qemus(vm_id: str) -> dict[int, str]:
    """pid -> pidfile path of every QEMU on this machine running `vm_id` (its -uuid)."""
    return {
        pid: args[args.index("-pidfile") + 1]
        for pid, args in command_lines()
        if args[0].endswith("qemu-system-x86_64") and vm_id in args
    }


def qemu_processes(vm_id: str) -> list[int]:
    return sorted(_qemus(vm_id))


def qemu_homes(vm_id: str) -> set[str]:
    """The nodes (runtime directories) where a QEMU runs `vm_id`.

    Counting homes, not processes: while `-daemonize` forks, QEMU's parent and its daemon are
    briefly both there, which is one QEMU starting on one node.
    """
    return {str(Path(pidfile).parent.parent.parent) for pidfile in _qemus(vm_id).values()}


def dump(data: Any) -> str:
    return json.dumps(data, indent=2)


def rf2_pool_on_two_disks(node_name: str, state_dir: str, api: Api, name: str = "hci") -> str:
    """An rf2 ARDFS pool over two disks (folders) of one node, once the node has joined it."""
    api.ok("POST", "/pools", json={"name": name, "type": "ardfs", "protection": "rf2"})
    for index in (0, 1):
        path = f"{state_dir}/ardfs-disk{index}"
        api.ok("POST", f"/pools/{name}/disks", json={"node": node_name, "path": path})
    wait_for(
        lambda: all(len(m["disks"]) == 2 and m["address"]
                    for m in api.ok("GET", f"/pools/{name}/members")) or None,
        60, "the node to join the pool with its two disks",
    )  # fmt: skip
    return name
