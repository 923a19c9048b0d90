"""heron task: long-running work, and following a task a command started."""

from typing import Any

import typer

from heron.cli.client import Client
from heron.cli.options import Json
from heron.cli.output import emit

app = typer.Typer(no_args_is_help=True, help="Long-running work.")

TASK_COLUMNS = [
    ("id", lambda t: t["id"]),
    ("kind", lambda t: t["kind"]),
    ("node", lambda t: t["node"]),
    ("state", lambda t: t["state"]),
    ("progress", lambda t: f"{t['progress'] * 100:.0f}%"),
    ("error", lambda t: t["error"]),
]


def finish(client: Client, reply: dict[str, Any], wait: bool, as_json: bool) -> None:
    """Show the task a request started: followed to its end with --wait, else just its id."""
    if wait:
        task = client.wait_task(reply["task"], show=not as_json)
        emit(
            task if as_json else {**reply, "state": task["state"]},
            as_json,
            None if as_json else [("task", lambda r: r["task"]), ("state", lambda r: r["state"])],
        )
    else:
        emit(reply, as_json, [("task", lambda r: r["task"])])


@app.command("list")
def task_list(as_json: Json = False) -> None:
    emit(Client().get("/tasks"), as_json, TASK_COLUMNS)


@app.command("show")
def task_show(task_id: str, as_json: Json = False) -> None:
    task = Client().get(f"/tasks/{task_id}")
    emit(task, True) if as_json else emit(task, False, TASK_COLUMNS)


@app.command("wait")
def task_wait(task_id: str, as_json: Json = False) -> None:
    emit(Client().wait_task(task_id, show=not as_json), as_json, TASK_COLUMNS)


@app.command("cancel")
def task_cancel(task_id: str) -> None:
    Client().post(f"/tasks/{task_id}/cancel")
