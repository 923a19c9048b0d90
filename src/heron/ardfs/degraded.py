"""Which copies (or shards) missed writes: the record that makes degraded I/O safe.

A write that could not reach a copy is acknowledged only after the (chunk, disk) pair is in
this log on disk, so the stale copy is never read from and the rebuild knows what to copy,
even after heron-io restarts. Append-only lines "+ chunk disk" / "- chunk disk", compacted
when loaded.
"""

import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path


def _nothing() -> None:
    pass


class DegradedLog:
    def __init__(self, path: Path, on_degraded: Callable[[], None] = _nothing):
        """`on_degraded` is called when the log goes from no stale copy to some, in the same
        step as the mark (heron-io publishes its status then: see maintenance.py)."""
        self.path = path
        self.on_degraded = on_degraded
        self.missing: defaultdict[int, set[str]] = defaultdict(set)
        self._load()

    @staticmethod
    def read(path: Path) -> defaultdict[int, set[str]]:
        """The stale copies a log records, without touching the file (for status and tools)."""
        missing: defaultdict[int, set[str]] = defaultdict(set)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            parts = line.split()
            if len(parts) != 3:
                continue  # a torn last line: its write was never acknowledged
            sign, chunk, disk = parts[0], int(parts[1]), parts[2]
            if sign == "+":
                missing[chunk].add(disk)
            else:
                missing[chunk].discard(disk)
                if not missing[chunk]:
                    del missing[chunk]
        return missing

    def _load(self) -> None:
        self.missing = self.read(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            handle.writelines(f"+ {c} {d}\n" for c, ds in self.missing.items() for d in ds)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)

    def stale(self, chunk: int) -> set[str]:
        found = self.missing.get(chunk)
        return found if found is not None else set()

    def pending(self, pairs: list[tuple[int, str]]) -> list[tuple[int, str]]:
        return [(c, d) for c, d in pairs if d not in self.stale(c)]

    def append(self, pairs: list[tuple[int, str]], added: bool) -> None:
        """Record pairs durably (blocking: run in a thread for writes in flight)."""
        sign = "+" if added else "-"
        with open(self.path, "a") as handle:
            handle.writelines(f"{sign} {c} {d}\n" for c, d in pairs)
            handle.flush()
            os.fsync(handle.fileno())

    def mark(self, pairs: list[tuple[int, str]]) -> None:
        was_healthy = not self.missing
        for chunk, disk in pairs:
            self.missing[chunk].add(disk)
        if was_healthy and self.missing:
            self.on_degraded()

    def clear(self, chunk: int, disk: str) -> None:
        found = self.missing.get(chunk)
        if found is not None:
            found.discard(disk)
            if not found:
                del self.missing[chunk]

    def count(self) -> int:
        return sum(len(d) for d in self.missing.values())
