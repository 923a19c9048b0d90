"""The CLI's HTTP client: where the API is, the token, and errors as one-line messages."""

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import httpx
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

CONFIG = Path(os.environ.get("HERON_CONFIG", Path.home() / ".config" / "heron" / "cli.json"))


class CliError(Exception):
    """Printed as one line on stderr; the command exits with `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 1) -> NoReturn:
    raise CliError(message, code)


def saved() -> dict[str, str]:
    try:
        return json.loads(CONFIG.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save(url: str, token: str) -> None:
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    CONFIG.touch(mode=0o600)
    CONFIG.write_text(json.dumps({"url": url, "token": token}))


class Client:
    def __init__(self, url: str | None = None, token: str | None = None):
        config = saved()
        self.url = (url or os.environ.get("HERON_URL") or config.get("url") or "").rstrip("/")
        self.token = token or os.environ.get("HERON_TOKEN") or config.get("token")
        if not self.url:
            fail("no API address: set HERON_URL or run `heron login --url URL`")
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=60)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            reply = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach {self.url}: {exc}")
        if reply.status_code >= 400:
            try:
                body = reply.json()
                message = body.get("message") or body.get("detail") or reply.text
            except ValueError:
                message = reply.text.strip() or reply.reason_phrase
            fail(f"{reply.status_code}: {message}")
        if reply.status_code == 204 or not reply.content:
            return None
        return reply.json()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def wait_task(self, task_id: str, show: bool = True, timeout: float = 3600) -> dict[str, Any]:
        """Follow a task to its end with a progress bar; fails if the task failed."""
        deadline = time.monotonic() + timeout
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            disable=not (show and sys.stderr.isatty()),
            console=None,
            transient=True,
        ) as bar:
            handle = bar.add_task("", total=1.0)
            while True:
                task = self.get(f"/tasks/{task_id}")
                bar.update(
                    handle,
                    completed=task["progress"],
                    description=f"{task['kind']} {task['state']}",
                )
                if task["state"] in ("succeeded", "failed", "cancelled"):
                    break
                if time.monotonic() > deadline:
                    fail(f"task {task_id} still {task['state']} after {timeout:.0f}s")
                time.sleep(0.2)  # polling interval of the progress bar
        if task["state"] != "succeeded":
            fail(f"task {task['kind']} {task['state']}: {task.get('error') or ''}".strip())
        return task
