"""heron vm hook: freeze hooks inside a running VM's guest, through its guest agent."""

from pathlib import Path
from typing import Annotated

import typer

from heron.cli.client import Client, fail
from heron.cli.options import Json
from heron.cli.output import emit
from heron.models.guest import MAX_HOOK_BYTES

app = typer.Typer(
    no_args_is_help=True,
    help="Freeze hooks in a running guest: scripts run with 'freeze' before a snapshot's "
    "freeze (a non-zero exit aborts it) and 'thaw' after.",
)

HOOK_COLUMNS = [
    ("name", lambda h: h["name"]),
    ("size", lambda h: h["size"]),
    ("executable", lambda h: "yes" if h["executable"] else "no"),
    ("sha256", lambda h: h["sha256"][:16]),
]


def _emit(listing: dict[str, object], as_json: bool) -> None:
    if as_json:
        emit(listing, True)
        return
    if not listing["runner"]:
        typer.echo("warning: the guest has no /etc/qemu/fsfreeze-hook to run them", err=True)
    emit(listing["hooks"], False, HOOK_COLUMNS)


@app.command("list")
def hook_list(vm: str, as_json: Json = False) -> None:
    """The guest's hooks, in the order they run."""
    _emit(Client().get(f"/vms/{vm}/guest/hooks"), as_json)


@app.command("install")
def hook_install(
    vm: str,
    name: Annotated[str, typer.Argument(help="the hook's file name in the guest")],
    path: Annotated[Path, typer.Argument(help="the script, e.g. guest/fsfreeze-hook.d/mysql")],
    as_json: Json = False,
) -> None:
    """Install or replace a hook in the guest."""
    try:
        script = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}")
    if len(script.encode()) > MAX_HOOK_BYTES:
        fail(f"{path} is larger than {MAX_HOOK_BYTES} bytes")
    reply = Client().request("PUT", f"/vms/{vm}/guest/hooks/{name}", json={"script": script})
    _emit(reply, as_json)


@app.command("remove")
def hook_remove(vm: str, name: str) -> None:
    """Remove a hook from the guest."""
    Client().request("DELETE", f"/vms/{vm}/guest/hooks/{name}")
