"""The audit log: who did what, when, with what result.

Append-only data stays out of etcd (see DESIGN.md, principle 7): each node appends the requests
it served to a JSON-lines file in its state directory, rotated by size; `GET /events` merges
the files of every node.
"""

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_BYTES = 16 * 1024 * 1024  # one file; one rotated predecessor is kept


class AuditLog:
    def __init__(self, path: Path, node: str):
        self.path = path
        self.node = node
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, **fields: Any) -> None:
        entry = {"time": time.time(), "node": self.node, **fields}
        line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            try:
                if self.path.stat().st_size > MAX_BYTES:
                    os.replace(self.path, self.path.with_suffix(".1.jsonl"))
            except FileNotFoundError:
                pass
            with open(self.path, "a+b") as out:
                # A crash can leave a line cut short: end it, so this entry stands alone.
                if out.tell() > 0:
                    out.seek(out.tell() - 1)
                    if out.read(1) != b"\n":
                        line = "\n" + line
                out.write(line.encode())

    def read(
        self,
        limit: int,
        since: float = 0.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
        marker: str = "",
    ) -> list[dict[str, Any]]:
        """The newest `limit` entries after `since` (and for which `where` holds), newest
        first. Lines without the text `marker` are skipped unparsed: a cheap first sieve
        for `where` when few entries match (the file holds up to 16 MiB)."""
        entries: list[dict[str, Any]] = []
        for path in (self.path, self.path.with_suffix(".1.jsonl")):
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                continue
            for line in reversed(lines):
                if marker not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if entry.get("time", 0) <= since:
                    return entries
                if where is not None and not where(entry):
                    continue
                entries.append(entry)
                if len(entries) >= limit:
                    return entries
        return entries
