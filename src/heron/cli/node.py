"""heron node: the nodes of the cluster, their IO reservation and maintenance mode."""

from typing import Annotated, Any

import typer

from heron.cli import parse
from heron.cli.client import Client
from heron.cli.options import Json, Wait
from heron.cli.output import emit, size
from heron.cli.task import finish

app = typer.Typer(no_args_is_help=True, help="Nodes of the cluster.")
maintenance_app = typer.Typer(no_args_is_help=True, help="Maintenance mode.")

NODE_COLUMNS = [
    ("name", lambda n: n["name"]),
    ("state", lambda n: n["state"]),
    ("leader", lambda n: "*" if n["leader"] else ""),
    ("api", lambda n: n["api_url"]),
    ("accel", lambda n: n["accelerator"]),
    ("cpus", lambda n: n["cpus"]),
    ("memory", lambda n: size(n["memory_mib"] << 20)),
    ("used", lambda n: size(n["memory_used_mib"] << 20)),
    ("vms", lambda n: n["vms"]),
]


@app.command("list")
def node_list(as_json: Json = False) -> None:
    emit(Client().get("/nodes"), as_json, NODE_COLUMNS)


@app.command("show")
def node_show(name: str, as_json: Json = False) -> None:
    emit(Client().get(f"/nodes/{name}"), True if as_json else as_json, NODE_COLUMNS)


@app.command("io")
def node_io(
    name: str,
    cpus: Annotated[int, typer.Option(help="cores reserved for heron-io (0: none)")],
    memory: Annotated[
        int,
        typer.Option(
            parser=parse.mebibytes,
            metavar="SIZE",
            show_default="0",
            help="memory reserved for heron-io, e.g. 2G",
        ),
    ] = 0,
    as_json: Json = False,
) -> None:
    """Reserve cores and memory of a node for the storage data path (taken from the VMs)."""
    body = {"cpus": cpus, "memory_mib": memory}
    emit(
        Client().request("PUT", f"/nodes/{name}/io", json=body),
        as_json,
        [("cpus", lambda r: r["cpus"]), ("memory", lambda r: size(r["memory_mib"] * 2**20))],
    )


app.add_typer(maintenance_app, name="maintenance")


@app.command("leave")
def node_leave(
    name: str,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="only say what leaving would do; change nothing")
    ] = False,
    as_json: Json = False,
) -> None:
    """Take an empty node out of the cluster (and out of etcd, if it runs a member). Says
    what happens to the data on its disks; refused while anything blocks it."""
    reply = Client().post(f"/nodes/{name}/leave", json={"dry_run": dry_run})
    if as_json:
        emit(reply, True)
        return
    for line in plan_lines(reply["plan"]):
        typer.echo(line)
    if not dry_run:
        removed = "removed" if reply["etcd_member_removed"] else "none"
        typer.echo(f"{name} left the cluster (etcd member: {removed})")


def plan_lines(plan: dict[str, Any]) -> list[str]:
    """A leave plan as an administrator reads it: blockers first, then the consequences."""
    node = plan["node"]
    lines = [f"{node} {'can' if plan['can_leave'] else 'cannot'} leave the cluster"
             + ("" if plan["live"] else " (its agent is down)")]  # fmt: skip
    lines += [f"  BLOCKED: {b['message']}" for b in plan["blockers"]]
    if plan["etcd_member"]:
        lines.append("  its etcd member is removed")
    for pool in plan["ardfs"]:
        mark = "BLOCKED: " if pool["blocking"] else ""
        lines.append(f"  ardfs {mark}{pool['message']} (disks {', '.join(pool['disks'])})")
    for volume in plan["local_volumes"]:
        lines.append(f"  volume {volume['pool']}/{volume['name']} stays on it, unreachable")
    return lines


@maintenance_app.command("enter")
def maintenance_enter(name: str, wait: Wait = True, as_json: Json = False) -> None:
    """Keep new VMs off the node and live-migrate its VMs away."""
    client = Client()
    finish(client, client.post(f"/nodes/{name}/maintenance/enter"), wait, as_json)


@maintenance_app.command("exit")
def maintenance_exit(name: str, as_json: Json = False) -> None:
    """Let the node take VMs again."""
    emit(
        Client().post(f"/nodes/{name}/maintenance/exit"),
        as_json,
        [("node", lambda r: r["node"]), ("maintenance", lambda r: r["maintenance"])],
    )
