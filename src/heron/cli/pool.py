"""heron pool: storage pools, their disks (ardfs) and LUN scans (iscsi, block)."""

from typing import Annotated, Any, get_args

import typer

from heron.cli import parse
from heron.cli.client import Client
from heron.cli.options import Json, Wait
from heron.cli.output import emit
from heron.models.storage import DEVICE_CLASSES, PoolType

app = typer.Typer(no_args_is_help=True, help="Storage pools.")

POOL_TYPE = parse.Choice(get_args(PoolType))
DEVICE_CLASS = parse.Choice(DEVICE_CLASSES)

POOL_COLUMNS = [
    ("name", lambda p: p["name"]),
    ("type", lambda p: p["type"]),
    ("shared", lambda p: p["shared"]),
    ("where", lambda p: _pool_where(p)),
]

MEMBER_COLUMNS = [
    ("node", lambda m: m["node"]),
    ("site", lambda m: m["site"]),
    ("disks", lambda m: ", ".join(f"{d['id']}:{d['path']} ({_class(d)})" for d in m["disks"])),
]

# One row per disk: `heron pool disks`.
DISK_COLUMNS = [
    ("disk", lambda d: d["id"]),
    ("node", lambda d: d["node"]),
    ("path", lambda d: d["path"]),
    ("class", lambda d: _class(d)),
    ("how", lambda d: d.get("class_note") or "-"),
]


def _class(disk: dict[str, Any]) -> str:
    """nvme, ssd or hdd, with how it is known unless detected: `ssd (assumed)`, `hdd (set)`."""
    found = disk.get("device_class")
    if found is None:
        return "not told yet"
    source = disk.get("class_source")
    return found if source in (None, "detected") else f"{found} ({source})"


def _pool_where(pool: dict[str, Any]) -> str:
    kind = pool["type"]
    if kind == "nfs":
        return f"{pool['server']}:{pool['export']}"
    if kind == "iscsi":
        return f"{pool['portal']} {pool['target']}"
    if kind == "block":
        return f"{pool['path']}/{pool['pattern']}"
    if kind == "rbd":
        return f"rbd:{pool['rbd_pool']}"
    if kind == "ardfs":
        return pool["protection"] + (
            f" on {pool['device_class']}" if pool.get("device_class") else ""
        )
    return pool["path"] or "<node>"


@app.command("list")
def pool_list(as_json: Json = False) -> None:
    emit(Client().get("/pools"), as_json, POOL_COLUMNS)


@app.command("create")
def pool_create(
    name: str,
    kind: Annotated[
        str,
        typer.Option(
            "--type",
            parser=POOL_TYPE,
            metavar="TYPE",
            help="dir, nfs, iscsi, block (FC/multipath) or rbd",
        ),
    ] = "dir",
    path: Annotated[
        str | None, typer.Option(help="dir: directory (default per node); block: device dir")
    ] = None,
    shared: Annotated[bool, typer.Option("--shared", help="dir: every node sees it")] = False,
    server: Annotated[str | None, typer.Option(help="nfs: server")] = None,
    export: Annotated[str | None, typer.Option(help="nfs: exported path")] = None,
    options: Annotated[str | None, typer.Option(help="nfs: mount options")] = None,
    portal: Annotated[str | None, typer.Option(help="iscsi: host[:port]")] = None,
    target: Annotated[str | None, typer.Option(help="iscsi: target IQN")] = None,
    pattern: Annotated[str | None, typer.Option(help="block: device names, e.g. mpath*")] = None,
    rbd_pool: Annotated[str | None, typer.Option(help="rbd: Ceph pool")] = None,
    monitor: Annotated[list[str] | None, typer.Option(help="rbd: monitor host[:port]")] = None,
    user: Annotated[str | None, typer.Option(help="rbd: Ceph user")] = None,
    conf: Annotated[str | None, typer.Option(help="rbd: ceph.conf path")] = None,
    protection: Annotated[
        str | None, typer.Option(help="ardfs: rf1, rf2, rf3, ec2+1 or ec3+1")
    ] = None,
    rebuild_grace: Annotated[
        float | None,
        typer.Option(
            parser=parse.seconds,
            metavar="SECONDS",
            help="ardfs: seconds a node may be down before its copies are made on the others "
            "(default 600)",
        ),
    ] = None,
    device_class: Annotated[
        str | None,
        typer.Option(
            parser=DEVICE_CLASS,
            metavar="CLASS",
            help="ardfs: place volumes only on nvme, ssd or hdd disks (default: any disk)",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    given = {
        "path": path,
        "server": server,
        "export": export,
        "options": options,
        "portal": portal,
        "target": target,
        "pattern": pattern,
        "rbd_pool": rbd_pool,
        "monitors": monitor,
        "user": user,
        "conf": conf,
        "protection": protection,
        "rebuild_grace_s": rebuild_grace,
        "device_class": device_class,
    }
    body = {"name": name, "type": kind, "shared": shared}
    body.update({k: v for k, v in given.items() if v is not None and v != []})
    emit(Client().post("/pools", json=body), as_json, POOL_COLUMNS)


@app.command("add-disk")
def pool_add_disk(
    name: str,
    node: Annotated[str, typer.Option(help="the node whose directory it is")],
    path: Annotated[str, typer.Option(help="a directory for the pool's chunks")],
    site: Annotated[str | None, typer.Option(help="the node's site")] = None,
    device_class: Annotated[
        str | None,
        typer.Option(
            parser=DEVICE_CLASS,
            metavar="CLASS",
            help="nvme, ssd or hdd (default: the node detects it from the kernel)",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Give an ardfs pool a disk: a directory on one of the nodes."""
    body = {"node": node, "path": path, **({"site": site} if site else {})}
    if device_class:
        body["device_class"] = device_class
    emit(Client().post(f"/pools/{name}/disks", json=body), as_json, MEMBER_COLUMNS)


@app.command("disks")
def pool_disks(name: str, as_json: Json = False) -> None:
    """An ardfs pool's disks: node, directory and device class (and how it was told)."""
    members = Client().get(f"/pools/{name}/members")
    disks = [{**d, "node": m["node"]} for m in members for d in m["disks"]]
    emit(disks, as_json, DISK_COLUMNS)


@app.command("set-disk-class")
def pool_set_disk_class(
    name: str,
    disk: str,
    device_class: Annotated[str, typer.Argument(parser=DEVICE_CLASS, metavar="CLASS")],
    as_json: Json = False,
) -> None:
    """Set a disk's device class (nvme, ssd or hdd). In a pool placed on one class, a disk
    leaving it has its copies moved onto the class's other disks."""
    body = {"device_class": device_class}
    reply = Client().request("PATCH", f"/pools/{name}/disks/{disk}", json=body)
    emit(reply, as_json, MEMBER_COLUMNS)


@app.command("remove-disk")
def pool_remove_disk(name: str, disk: str, as_json: Json = False) -> None:
    """Take a disk out of an ardfs pool: its copies are made on the other disks (refused in
    an rf1 pool while volumes are placed on it: it holds their only copies)."""
    emit(Client().request("DELETE", f"/pools/{name}/disks/{disk}"), as_json, MEMBER_COLUMNS)


@app.command("scan")
def pool_scan(name: str, wait: Wait = True, as_json: Json = False) -> None:
    """Find an iscsi or block pool's LUNs: new ones become volumes."""
    client = Client()
    reply = client.post(f"/pools/{name}/scan")
    if not wait:
        emit(reply, as_json, [("task", lambda r: r["task"])])
        return
    task = client.wait_task(reply["task"], show=not as_json)
    result = task.get("result") or {}
    emit(
        task if as_json else {**result, "state": task["state"]},
        as_json,
        None
        if as_json
        else [
            ("state", lambda r: r["state"]),
            ("added", lambda r: ", ".join(r.get("added", [])) or "-"),
            ("resized", lambda r: ", ".join(r.get("resized", [])) or "-"),
            ("missing", lambda r: ", ".join(r.get("missing", [])) or "-"),
        ],
    )


@app.command("delete")
def pool_delete(name: str) -> None:
    Client().request("DELETE", f"/pools/{name}")
