"""Helpers shared by the tests: waiting on conditions, the API, the CLI and etcd."""

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from heron.configdb import ConfigDB

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
HERON = [sys.executable, "-m", "heron.cli.main"]


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll until `predicate` returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Api:
    """A thin client for tests: returns replies, never raises on HTTP errors."""

    def __init__(self, url: str, token: str | None):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self.token = token
        self.http = httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=60)

    def __getattr__(self, method: str) -> Callable[..., httpx.Response]:
        return getattr(self.http, method)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = self.http.request(method, path, **kwargs)
        assert reply.status_code < 300, f"{method} {path}: {reply.status_code} {reply.text}"
        return reply.json() if reply.content else None

    def wait_task(self, task_id: str, timeout: float = 120) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            task = self.ok("GET", f"/tasks/{task_id}")
            return task if task["state"] in ("succeeded", "failed", "cancelled") else None

        task = wait_for(finished, timeout, f"task {task_id}")
        assert task["state"] == "succeeded", task
        return task

    def vm(self, ref: str) -> dict[str, Any]:
        return self.ok("GET", f"/vms/{ref}")


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


def etcd_snapshot(endpoints: list[str]) -> tuple[int, dict[str, bytes]]:
    """The store revision and every key and value: to prove that nothing was written."""

    async def read() -> tuple[int, dict[str, bytes]]:
        async with ConfigDB(endpoints) as db:
            return await db.revision(), await db.dump("/")

    return asyncio.run(read())


def qemu_processes(vm_id: str) -> list[int]:
    """Pids of every QEMU on this machine started for `vm_id` (its -uuid)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"qemu-system-x86_64") and vm_id.encode() in args:
            found.append(int(proc.name))
    return found


def dump(data: Any) -> str:
    return json.dumps(data, indent=2)
