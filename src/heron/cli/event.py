"""heron event: the audit log."""

import datetime

import typer

from heron.cli.client import Client
from heron.cli.options import Json
from heron.cli.output import emit

app = typer.Typer(no_args_is_help=True, help="The audit log.")

EVENT_COLUMNS = [
    (
        "time",
        lambda e: datetime.datetime.fromtimestamp(e["time"]).isoformat(timespec="seconds"),
    ),
    ("node", lambda e: e["node"]),
    ("user", lambda e: e.get("user")),
    ("request", lambda e: f"{e.get('method')} {e.get('path')}"),
    ("status", lambda e: e.get("status")),
]


@app.command("list")
def event_list(limit: int = 50, as_json: Json = False) -> None:
    emit(Client().get("/events", params={"limit": limit}), as_json, EVENT_COLUMNS)
