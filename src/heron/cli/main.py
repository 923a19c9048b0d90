"""heron: manage a Heron cluster from the command line (the API, with tables and progress)."""

import getpass
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from heron import devcluster as dev
from heron.cli import client as api
from heron.cli.client import Client, CliError
from heron.cli.output import emit, parse_size, size

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
vm_app = typer.Typer(no_args_is_help=True, help="Virtual machines.")
node_app = typer.Typer(no_args_is_help=True, help="Nodes of the cluster.")
pool_app = typer.Typer(no_args_is_help=True, help="Storage pools.")
volume_app = typer.Typer(no_args_is_help=True, help="Volumes in pools.")
task_app = typer.Typer(no_args_is_help=True, help="Long-running work.")
event_app = typer.Typer(no_args_is_help=True, help="The audit log.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens for automation.")
user_app = typer.Typer(no_args_is_help=True, help="Users and roles.")
devcluster_app = typer.Typer(no_args_is_help=True, help="A whole cluster on this machine.")
group_app = typer.Typer(no_args_is_help=True, help="VM groups: affinity and anti-affinity.")
cluster_app = typer.Typer(no_args_is_help=True, help="The cluster as a whole.")
for sub, name in (
    (vm_app, "vm"),
    (node_app, "node"),
    (pool_app, "pool"),
    (volume_app, "volume"),
    (task_app, "task"),
    (event_app, "event"),
    (token_app, "token"),
    (user_app, "user"),
    (devcluster_app, "devcluster"),
    (group_app, "group"),
    (cluster_app, "cluster"),
):
    app.add_typer(sub, name=name)

Json = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="follow the task to its end")]


def _finish(client: Client, reply: dict[str, Any], wait: bool, as_json: bool) -> None:
    if wait:
        task = client.wait_task(reply["task"], show=not as_json)
        emit(
            task if as_json else {**reply, "state": task["state"]},
            as_json,
            None if as_json else [("task", lambda r: r["task"]), ("state", lambda r: r["state"])],
        )
    else:
        emit(reply, as_json, [("task", lambda r: r["task"])])


# -- session -------------------------------------------------------------------------------


@app.command()
def login(
    url: Annotated[str, typer.Option(envvar="HERON_URL", help="API address")],
    username: Annotated[str, typer.Option("--username", "-u")] = "admin",
    password: Annotated[str | None, typer.Option(envvar="HERON_PASSWORD")] = None,
) -> None:
    """Log in and remember the API address and session token."""
    secret = password if password is not None else getpass.getpass("password: ")
    client = Client(url=url, token="-")
    reply = client.post("/auth/login", json={"username": username, "password": secret})
    api.save(url, reply["token"])
    typer.echo(f"logged in to {url} as {reply['user']} ({reply['role']})")


# -- nodes ---------------------------------------------------------------------------------

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


@node_app.command("list")
def node_list(as_json: Json = False) -> None:
    emit(Client().get("/nodes"), as_json, NODE_COLUMNS)


@node_app.command("show")
def node_show(name: str, as_json: Json = False) -> None:
    emit(Client().get(f"/nodes/{name}"), True if as_json else as_json, NODE_COLUMNS)


# -- VMs -----------------------------------------------------------------------------------

VM_COLUMNS = [
    ("name", lambda v: v["name"]),
    ("state", lambda v: v["state"]),
    ("power", lambda v: v["power"]),
    ("node", lambda v: v["node"]),
    ("vcpus", lambda v: v["spec"]["vcpus"]),
    ("memory", lambda v: size(v["spec"]["memory_mib"] << 20)),
    ("pid", lambda v: (v["status"] or {}).get("pid")),
    ("vnc", lambda v: (v["status"] or {}).get("vnc")),
    ("id", lambda v: v["id"]),
]


@node_app.command("io")
def node_io(
    name: str,
    cpus: Annotated[int, typer.Option(help="cores reserved for heron-io (0: none)")],
    memory: Annotated[str, typer.Option(help="memory reserved for heron-io, e.g. 2G")] = "0",
    as_json: Json = False,
) -> None:
    """Reserve cores and memory of a node for the storage data path (taken from the VMs)."""
    body = {"cpus": cpus, "memory_mib": parse_size(memory) // 2**20 if memory != "0" else 0}
    emit(
        Client().request("PUT", f"/nodes/{name}/io", json=body),
        as_json,
        [("cpus", lambda r: r["cpus"]), ("memory", lambda r: size(r["memory_mib"] * 2**20))],
    )


maintenance_app = typer.Typer(no_args_is_help=True, help="Maintenance mode.")
node_app.add_typer(maintenance_app, name="maintenance")


@node_app.command("leave")
def node_leave(name: str, as_json: Json = False) -> None:
    """Take an empty node out of the cluster (and out of etcd, if it runs a member)."""
    emit(
        Client().post(f"/nodes/{name}/leave"),
        as_json,
        [
            ("node", lambda r: r["node"]),
            ("etcd member removed", lambda r: r["etcd_member_removed"]),
        ],
    )


@maintenance_app.command("enter")
def maintenance_enter(name: str, wait: Wait = True, as_json: Json = False) -> None:
    """Keep new VMs off the node and live-migrate its VMs away."""
    client = Client()
    _finish(client, client.post(f"/nodes/{name}/maintenance/enter"), wait, as_json)


@maintenance_app.command("exit")
def maintenance_exit(name: str, as_json: Json = False) -> None:
    """Let the node take VMs again."""
    emit(
        Client().post(f"/nodes/{name}/maintenance/exit"),
        as_json,
        [("node", lambda r: r["node"]), ("maintenance", lambda r: r["maintenance"])],
    )


@vm_app.command("list")
def vm_list(
    node: Annotated[str | None, typer.Option(help="only this node's")] = None, as_json: Json = False
) -> None:
    emit(Client().get("/vms", params={"node": node} if node else None), as_json, VM_COLUMNS)


@vm_app.command("show")
def vm_show(vm: str, as_json: Json = False) -> None:
    data = Client().get(f"/vms/{vm}")
    emit(data, True) if as_json else emit(data, False, VM_COLUMNS)


def _disk(text: str) -> dict[str, Any]:
    """pool:SIZE, pool:from=POOL/IMAGE[:SIZE], or vol=POOL/NAME; bus=... may follow."""
    parts = text.split(",")
    main, options = parts[0], dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    disk: dict[str, Any] = {}
    if main.startswith("vol="):
        disk["volume"] = main[4:]
    else:
        pool, _, rest = main.partition(":")
        disk["pool"] = pool
        for item in filter(None, rest.split(":")):
            if item.startswith("from="):
                disk["source"] = item[5:]
            else:
                disk["size"] = parse_size(item)
    disk.update(options)
    return disk


@vm_app.command("create")
def vm_create(
    name: str,
    vcpus: Annotated[int, typer.Option(help="virtual CPUs")] = 1,
    memory: Annotated[str, typer.Option(help="memory, e.g. 512M or 2G")] = "512M",
    disk: Annotated[
        list[str] | None,
        typer.Option(
            help="pool:SIZE, pool:from=POOL/IMAGE or vol=POOL/NAME; ',bus=scsi' etc. may follow"
        ),
    ] = None,
    nic: Annotated[list[str] | None, typer.Option(help="user or none, ',model=e1000'")] = None,
    firmware: Annotated[str, typer.Option(help="bios or uefi")] = "bios",
    machine: Annotated[str, typer.Option(help="q35 or pc")] = "q35",
    node: Annotated[str | None, typer.Option(help="run on this node (default: chosen)")] = None,
    start: Annotated[bool, typer.Option("--start", help="start it once created")] = False,
    ha: Annotated[
        bool, typer.Option("--ha", help="restart it elsewhere if its node fails")
    ] = False,
    group: Annotated[str | None, typer.Option(help="VM group (placement rule)")] = None,
    count: Annotated[int, typer.Option(help="create NAME-001..NAME-N from this template")] = 0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="with --count: only show where")
    ] = False,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Create a VM and its disks (or --count of them, spread over the nodes)."""
    nics = []
    for item in nic or []:
        network, *options = item.split(",")
        nics.append({"network": network, **dict(o.split("=", 1) for o in options if "=" in o)})
    body = {
        "name": name,
        "vcpus": vcpus,
        "memory_mib": parse_size(memory) >> 20,
        "disks": [_disk(d) for d in disk or []],
        "nics": nics,
        "firmware": firmware,
        "machine": machine,
        "start": start,
    }
    if node:
        body["node"] = node
    body.update({"ha": {"enabled": ha}, "group": group})
    client = Client()
    if not count:
        _finish(client, client.post("/vms", json=body), wait, as_json)
        return
    reply = client.post("/vms/batch", json={**body, "count": count, "dry_run": dry_run})
    if wait and not dry_run:
        for item in reply["vms"]:
            client.wait_task(item["task"], show=not as_json)
    emit(
        reply["vms"],
        as_json,
        [
            ("name", lambda v: v["name"]),
            ("node", lambda v: v["node"]),
            ("id", lambda v: v["vm"] or "(dry run)"),
        ],
    )


def _action(action: str) -> None:
    def command(
        vm: str,
        wait: Wait = True,
        as_json: Json = False,
        timeout: Annotated[float, typer.Option(help="shutdown: seconds before forcing")] = 60,
    ) -> None:
        client = Client()
        body = {"timeout": timeout} if action == "shutdown" else None
        _finish(client, client.post(f"/vms/{vm}/actions/{action}", json=body), wait, as_json)

    command.__doc__ = {
        "start": "Start a VM.",
        "stop": "Power a VM off at once.",
        "shutdown": "Shut a VM down through ACPI, forcing it after --timeout.",
        "reboot": "Reset a running VM.",
        "pause": "Pause a running VM.",
        "resume": "Resume a paused VM.",
    }[action]
    vm_app.command(action)(command)


for _name in ("start", "stop", "shutdown", "reboot", "pause", "resume"):
    _action(_name)


@vm_app.command("migrate")
def vm_migrate(
    vm: str,
    target: Annotated[str | None, typer.Option(help="node to move to (default: chosen)")] = None,
    max_downtime: Annotated[int, typer.Option(help="longest guest pause, ms")] = 300,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Live-migrate a running VM to another node."""
    client = Client()
    body = {"target": target, "max_downtime_ms": max_downtime}
    _finish(client, client.post(f"/vms/{vm}/actions/migrate", json=body), wait, as_json)


@vm_app.command("update")
def vm_update(
    vm: str,
    vcpus: Annotated[int | None, typer.Option()] = None,
    memory: Annotated[str | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    revision: Annotated[
        int | None, typer.Option(help="refuse if the VM changed since this revision")
    ] = None,
    as_json: Json = False,
) -> None:
    """Change a VM's hardware (takes effect at its next start)."""
    body: dict[str, Any] = {
        "vcpus": vcpus,
        "name": name,
        "description": description,
        "revision": revision,
        "memory_mib": parse_size(memory) >> 20 if memory else None,
    }
    data = Client().request(
        "PATCH", f"/vms/{vm}", json={k: v for k, v in body.items() if v is not None}
    )
    emit(data, as_json, VM_COLUMNS)


@vm_app.command("delete")
def vm_delete(
    vm: str,
    volumes: Annotated[bool, typer.Option("--volumes", help="delete its volumes")] = False,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Delete a VM, stopping it first."""
    client = Client()
    reply = client.request("DELETE", f"/vms/{vm}", params={"volumes": volumes})
    _finish(client, reply, wait, as_json)


# -- storage -------------------------------------------------------------------------------

POOL_COLUMNS = [
    ("name", lambda p: p["name"]),
    ("type", lambda p: p["type"]),
    ("shared", lambda p: p["shared"]),
    ("where", lambda p: _pool_where(p)),
]


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
        return pool["protection"]
    return pool["path"] or "<node>"


VOLUME_COLUMNS = [
    ("name", lambda v: v["name"]),
    ("format", lambda v: v["format"]),
    ("size", lambda v: size(v["size"])),
    ("allocated", lambda v: size(v["allocation"])),
    ("state", lambda v: v["state"]),
    ("node", lambda v: v["node"] or "shared"),
    ("redundancy", lambda v: redundancy(v.get("health"))),
    ("vm", lambda v: v["attached_to"]),
    ("id", lambda v: v["id"]),
]


def redundancy(health: dict | None) -> str:
    """An ardfs volume's health in a few words ('' for other pools)."""
    if not health:
        return ""
    if health.get("move_left"):
        return f"{health['state']}, moving: {health['move_left']} copies to make"
    if health.get("stale_chunks"):
        return f"{health['state']}, {health['stale_chunks']} blocks to rebuild"
    return health["state"]


@pool_app.command("list")
def pool_list(as_json: Json = False) -> None:
    emit(Client().get("/pools"), as_json, POOL_COLUMNS)


@pool_app.command("create")
def pool_create(
    name: str,
    kind: Annotated[
        str, typer.Option("--type", help="dir, nfs, iscsi, block (FC/multipath) or rbd")
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
            help="ardfs: seconds a node may be down before its copies are made on the others "
            "(default 600)"
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
    }
    body = {"name": name, "type": kind, "shared": shared}
    body.update({k: v for k, v in given.items() if v is not None and v != []})
    emit(Client().post("/pools", json=body), as_json, POOL_COLUMNS)


MEMBER_COLUMNS = [
    ("node", lambda m: m["node"]),
    ("site", lambda m: m["site"]),
    ("disks", lambda m: ", ".join(f"{d['id']}:{d['path']}" for d in m["disks"])),
]


@pool_app.command("add-disk")
def pool_add_disk(
    name: str,
    node: Annotated[str, typer.Option(help="the node whose directory it is")],
    path: Annotated[str, typer.Option(help="a directory for the pool's chunks")],
    site: Annotated[str | None, typer.Option(help="the node's site")] = None,
    as_json: Json = False,
) -> None:
    """Give an ardfs pool a disk: a directory on one of the nodes."""
    body = {"node": node, "path": path, **({"site": site} if site else {})}
    emit(Client().post(f"/pools/{name}/disks", json=body), as_json, MEMBER_COLUMNS)


@pool_app.command("remove-disk")
def pool_remove_disk(name: str, disk: str, as_json: Json = False) -> None:
    """Take a disk out of an ardfs pool: its copies are made on the other disks."""
    emit(Client().request("DELETE", f"/pools/{name}/disks/{disk}"), as_json, MEMBER_COLUMNS)


@pool_app.command("scan")
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


@pool_app.command("delete")
def pool_delete(name: str) -> None:
    Client().request("DELETE", f"/pools/{name}")


@volume_app.command("list")
def volume_list(pool: str, as_json: Json = False) -> None:
    emit(Client().get(f"/pools/{pool}/volumes"), as_json, VOLUME_COLUMNS)


@volume_app.command("create")
def volume_create(
    pool: str,
    name: str,
    size_text: Annotated[str, typer.Argument(metavar="SIZE")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="qcow2 or raw (default: the pool's)")
    ] = None,
    node: Annotated[str | None, typer.Option()] = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    client = Client()
    body = {"name": name, "size": parse_size(size_text), "format": fmt, "node": node}
    _finish(client, client.post(f"/pools/{pool}/volumes", json=body), wait, as_json)


@volume_app.command("import")
def volume_import(
    pool: str,
    name: str,
    path: Annotated[str | None, typer.Option(help="image file on the node")] = None,
    upload: Annotated[Path | None, typer.Option(help="local file to upload")] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="qcow2 or raw (default: the pool's)")
    ] = None,
    node: Annotated[str | None, typer.Option()] = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Import an image into a new volume: from a path on a node, or uploaded from here."""
    client = Client()
    if (path is None) == (upload is None):
        raise CliError("give exactly one of --path or --upload", 2)
    if upload is not None:
        if not upload.is_file():
            raise CliError(f"{upload} is not a file", 2)
        with open(upload, "rb") as handle:
            reply = client.post(
                f"/pools/{pool}/volumes/upload",
                data={"name": name, **({"format": fmt} if fmt else {})},
                files={"file": (upload.name, handle)},
            )
    else:
        body = {"name": name, "path": path, "format": fmt, "node": node}
        reply = client.post(f"/pools/{pool}/volumes/import", json=body)
    _finish(client, reply, wait, as_json)


@volume_app.command("resize")
def volume_resize(
    pool: str,
    volume: str,
    size_text: Annotated[str, typer.Argument(metavar="SIZE")],
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Grow a volume (online if its VM runs)."""
    client = Client()
    reply = client.request(
        "PATCH", f"/pools/{pool}/volumes/{volume}", json={"size": parse_size(size_text)}
    )
    _finish(client, reply, wait, as_json)


@volume_app.command("delete")
def volume_delete(pool: str, volume: str, wait: Wait = True, as_json: Json = False) -> None:
    client = Client()
    _finish(client, client.request("DELETE", f"/pools/{pool}/volumes/{volume}"), wait, as_json)


# -- tasks, events, tokens, users ----------------------------------------------------------

TASK_COLUMNS = [
    ("id", lambda t: t["id"]),
    ("kind", lambda t: t["kind"]),
    ("node", lambda t: t["node"]),
    ("state", lambda t: t["state"]),
    ("progress", lambda t: f"{t['progress'] * 100:.0f}%"),
    ("error", lambda t: t["error"]),
]


@task_app.command("list")
def task_list(as_json: Json = False) -> None:
    emit(Client().get("/tasks"), as_json, TASK_COLUMNS)


@task_app.command("show")
def task_show(task_id: str, as_json: Json = False) -> None:
    task = Client().get(f"/tasks/{task_id}")
    emit(task, True) if as_json else emit(task, False, TASK_COLUMNS)


@task_app.command("wait")
def task_wait(task_id: str, as_json: Json = False) -> None:
    emit(Client().wait_task(task_id, show=not as_json), as_json, TASK_COLUMNS)


@task_app.command("cancel")
def task_cancel(task_id: str) -> None:
    Client().post(f"/tasks/{task_id}/cancel")


@event_app.command("list")
def event_list(limit: int = 50, as_json: Json = False) -> None:
    import datetime

    columns = [
        (
            "time",
            lambda e: datetime.datetime.fromtimestamp(e["time"]).isoformat(timespec="seconds"),
        ),
        ("node", lambda e: e["node"]),
        ("user", lambda e: e.get("user")),
        ("request", lambda e: f"{e.get('method')} {e.get('path')}"),
        ("status", lambda e: e.get("status")),
    ]
    emit(Client().get("/events", params={"limit": limit}), as_json, columns)


@token_app.command("create")
def token_create(description: str = "", as_json: Json = False) -> None:
    emit(
        Client().post("/tokens", json={"description": description}),
        as_json,
        [("id", lambda t: t["id"]), ("token", lambda t: t["token"])],
    )


@token_app.command("list")
def token_list(as_json: Json = False) -> None:
    emit(
        Client().get("/tokens"),
        as_json,
        [
            ("id", lambda t: t["id"]),
            ("user", lambda t: t["user"]),
            ("kind", lambda t: t["kind"]),
            ("description", lambda t: t["description"]),
        ],
    )


@token_app.command("revoke")
def token_revoke(token_id: str) -> None:
    Client().request("DELETE", f"/tokens/{token_id}")


@user_app.command("list")
def user_list(as_json: Json = False) -> None:
    emit(
        Client().get("/users"),
        as_json,
        [("name", lambda u: u["name"]), ("role", lambda u: u["role"])],
    )


@user_app.command("create")
def user_create(
    name: str,
    role: str = "viewer",
    password: Annotated[str | None, typer.Option(envvar="HERON_NEW_PASSWORD")] = None,
) -> None:
    secret = password if password is not None else getpass.getpass("new password: ")
    Client().post("/users", json={"name": name, "role": role, "password": secret})


@user_app.command("delete")
def user_delete(name: str) -> None:
    Client().request("DELETE", f"/users/{name}")


@group_app.command("list")
def group_list(as_json: Json = False) -> None:
    emit(
        Client().get("/groups"),
        as_json,
        [
            ("name", lambda g: g["name"]),
            ("placement", lambda g: g["placement"]),
            ("strict", lambda g: g["strict"]),
        ],
    )


@group_app.command("create")
def group_create(
    name: str,
    placement: Annotated[
        str, typer.Option(help="spread (one per node), together, or none")
    ] = "spread",
    strict: Annotated[bool, typer.Option("--strict/--soft", help="must, or should")] = True,
) -> None:
    Client().post("/groups", json={"name": name, "placement": placement, "strict": strict})


@group_app.command("delete")
def group_delete(name: str) -> None:
    Client().request("DELETE", f"/groups/{name}")


@cluster_app.command("show")
def cluster_show(as_json: Json = False) -> None:
    """The leader, the counts, and the settings."""
    client = Client()
    data = {**client.get("/cluster"), "settings": client.get("/cluster/settings")}
    emit(
        data,
        as_json,
        [
            ("leader", lambda c: c["leader"]),
            ("nodes", lambda c: c["nodes"]),
            ("vms", lambda c: c["vms"]),
            ("version", lambda c: c["version"]),
            ("drs", lambda c: "on" if c["settings"]["drs"]["enabled"] else "off"),
        ],
    )


@cluster_app.command("drs")
def cluster_drs(
    enable: Annotated[bool, typer.Option("--enable/--disable")],
    threshold: Annotated[
        float | None, typer.Option(help="memory load spread that triggers")
    ] = None,
    interval: Annotated[float | None, typer.Option(help="seconds between checks")] = None,
) -> None:
    """Turn dynamic balancing on or off."""
    client = Client()
    settings = client.get("/cluster/settings")
    drs = {**settings["drs"], "enabled": enable}
    drs.update({k: v for k, v in (("threshold", threshold), ("interval", interval)) if v})
    client.request("PUT", "/cluster/settings", json={**settings, "drs": drs})


# -- devcluster ----------------------------------------------------------------------------


@devcluster_app.command("up")
def devcluster_up(
    nodes: Annotated[int, typer.Option(min=1, max=64)] = 3,
    directory: Annotated[Path, typer.Option("--dir")] = Path("heron-devcluster"),
    embedded_etcd: Annotated[
        bool, typer.Option("--embedded-etcd", help="etcd inside the nodes, grown as they join")
    ] = False,
    as_json: Json = False,
) -> None:
    """Start N agents and an etcd of 3 members (1 for one node) on loopback."""
    cluster, token = dev.up(directory, nodes, embedded=embedded_etcd)
    data = {
        "dir": cluster.dir,
        "token": token,
        "etcd": cluster.endpoints,
        "nodes": [{"name": n.name, "url": n.url} for n in cluster.nodes],
    }
    if as_json:
        emit(data, True)
        return
    for node in data["nodes"]:
        typer.echo(f"{node['name']}  {node['url']}")
    typer.echo(f"export HERON_URL={cluster.nodes[0].url} HERON_TOKEN={token}")


@devcluster_app.command("down")
def devcluster_down(
    directory: Annotated[Path, typer.Option("--dir")] = Path("heron-devcluster"),
) -> None:
    """Stop every agent, VM and etcd member of the devcluster."""
    dev.down(directory)


@devcluster_app.command("add-node")
def devcluster_add_node(
    directory: Annotated[Path, typer.Option("--dir")] = Path("heron-devcluster"),
) -> None:
    """Start one more node; it joins the running cluster."""
    node = dev.DevCluster.load(directory.resolve()).add_node()
    typer.echo(f"{node.name}  {node.url}")


@devcluster_app.command("start-node")
def devcluster_start_node(
    name: str, directory: Annotated[Path, typer.Option("--dir")] = Path("heron-devcluster")
) -> None:
    """Start one node's agent again (after it was stopped or killed)."""
    cluster = dev.DevCluster.load(directory.resolve())
    cluster.start_node(name)
    cluster.wait_api(cluster.node(name), 60)


def main() -> None:
    try:
        app(standalone_mode=False)
    except CliError as exc:
        sys.stderr.write(f"heron: {exc}\n")
        sys.exit(exc.code)
    except dev.DevClusterError as exc:
        sys.stderr.write(f"heron: {str(exc).splitlines()[0]}\n")
        sys.exit(1)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
