"""Readable tables by default, JSON with --json."""

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def emit(data: Any, as_json: bool, columns: Sequence[Column] | None = None) -> None:
    if as_json or columns is None:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    table = Table(box=None, pad_edge=False, header_style="bold")
    for title, _ in columns:
        table.add_column(title)
    for row in rows:
        table.add_row(*("" if (v := get(row)) is None else str(v) for _, get in columns))
    Console(width=200).print(table)


def size(value: int | None) -> str:
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return str(value)
