"""heron vm snapshot: a VM's snapshots, as a tree; take, revert, delete and rename them."""

from typing import Annotated, Any, get_args

import typer

from heron.cli import parse
from heron.cli.client import Client
from heron.cli.options import Json, Wait
from heron.cli.output import emit, size
from heron.cli.task import finish
from heron.models.snapshot import Quiesce, Snapshot, tree_order

app = typer.Typer(no_args_is_help=True, help="A VM's snapshots.")

QUIESCE = parse.Choice(get_args(Quiesce))


def _disks(s: dict[str, Any]) -> str:
    known = [d["size"] for d in s["disks"] if d.get("size") is not None]
    return size(sum(known)) if known else "-"


def each_disk(s: dict[str, Any]) -> str:
    """Every disk's own size ("-": its pool cannot tell, or not yet): on a VM with disks of
    several pools the total above counts only those that can."""
    return ", ".join(f"disk{d['index']} {size(d.get('size'))}" for d in s["disks"]) or "-"


def _memory(s: dict[str, Any]) -> str:
    """Whether it holds the memory, and where when not in a disk: a volume of that pool."""
    if not s["memory"]:
        return "no"
    return f"yes (pool {s['state_pool']})" if s.get("state_pool") else "yes"


def rows(listing: dict[str, Any]) -> list[dict[str, Any]]:
    """The snapshots in tree order, each name indented by its depth and the current one
    marked."""
    snapshots = [Snapshot.model_validate(_record(s)) for s in listing["snapshots"]]
    by_id = {s["id"]: s for s in listing["snapshots"]}
    out = []
    for depth, snapshot in tree_order(snapshots):
        row = dict(by_id[snapshot.id])
        mark = " *" if row.get("current") else ""
        row["tree"] = "  " * depth + ("└ " if depth else "") + row["name"] + mark
        out.append(row)
    return out


def _record(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k in Snapshot.model_fields}


COLUMNS = [
    ("name", lambda s: s["tree"]),
    ("state", lambda s: s["state"]),
    ("memory", _memory),
    ("consistency", lambda s: s["consistency"]),
    ("memory size", lambda s: size(s["vm_state_size"]) if s["vm_state_size"] else "-"),
    ("disk size", _disks),
    ("description", lambda s: s["description"] or None),
    ("id", lambda s: s["id"]),
]


@app.command("list")
def snapshot_list(vm: str, as_json: Json = False) -> None:
    """The VM's snapshots as a tree (oldest first); * marks the current one, the parent of
    the next snapshot."""
    listing = Client().get(f"/vms/{vm}/snapshots")
    emit(listing if as_json else rows(listing), as_json, COLUMNS)


@app.command("show")
def snapshot_show(vm: str, snapshot: str, as_json: Json = False) -> None:
    data = Client().get(f"/vms/{vm}/snapshots/{snapshot}")
    if as_json:
        emit(data, True)
        return
    reason = f"{data['consistency']} ({data['consistency_reason']})"
    columns = [*COLUMNS[:6], ("disks", each_disk), *COLUMNS[6:]]
    emit({**data, "tree": data["name"], "consistency": reason}, False, columns)


@app.command("create")
def snapshot_create(
    vm: str,
    name: str,
    description: Annotated[str, typer.Option(help="what it is for")] = "",
    memory: Annotated[
        bool,
        typer.Option(
            "--memory",
            help="save the running guest's memory too (into its first qcow2 disk, or else "
            "into a volume made for it in a pool: `memory` in the list says which)",
        ),
    ] = False,
    quiesce: Annotated[
        str,
        typer.Option(
            parser=QUIESCE,
            metavar="MODE",
            help="freeze the guest's filesystems: auto (if its agent answers), required, off",
        ),
    ] = "auto",
    freeze_limit: Annotated[
        float,
        typer.Option(parser=parse.seconds, metavar="SECONDS", help="the longest freeze (1-60)"),
    ] = 10.0,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Take a snapshot of every disk of the VM at one instant."""
    client = Client()
    body = {
        "name": name,
        "description": description,
        "memory": memory,
        "quiesce": quiesce,
        "freeze_limit_s": freeze_limit,
    }
    finish(client, client.post(f"/vms/{vm}/snapshots", json=body), wait, as_json)


@app.command("revert")
def snapshot_revert(
    vm: str,
    snapshot: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Bring the VM back to a snapshot; what it has now is lost. A memory snapshot: the VM
    runs on from the snapshot's instant (started if it was off). Otherwise the VM is
    stopped, its disks reverted, and it starts again if it was running."""
    if not yes:
        typer.confirm(f"Revert VM {vm} to {snapshot}? What it has now is lost", abort=True)
    client = Client()
    finish(client, client.post(f"/vms/{vm}/snapshots/{snapshot}/revert"), wait, as_json)


@app.command("delete")
def snapshot_delete(vm: str, snapshot: str, wait: Wait = True, as_json: Json = False) -> None:
    """Delete a snapshot, wherever it is in the tree; its children follow its parent."""
    client = Client()
    finish(client, client.request("DELETE", f"/vms/{vm}/snapshots/{snapshot}"), wait, as_json)


@app.command("set")
def snapshot_set(
    vm: str,
    snapshot: str,
    name: Annotated[str | None, typer.Option("--name", help="its new name")] = None,
    description: Annotated[str | None, typer.Option(help="its new description")] = None,
    as_json: Json = False,
) -> None:
    """Rename a snapshot or change its description."""
    body = {k: v for k, v in {"name": name, "description": description}.items() if v is not None}
    if not body:
        raise typer.BadParameter("give --name or --description")
    data = Client().request("PATCH", f"/vms/{vm}/snapshots/{snapshot}", json=body)
    emit(data, True) if as_json else emit({**data, "tree": data["name"]}, False, COLUMNS)
