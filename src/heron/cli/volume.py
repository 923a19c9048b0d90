"""heron volume: volumes in pools: create, import or upload, grow, delete, export (iSCSI)."""

from pathlib import Path
from typing import Annotated, Any

import typer

from heron.cli import parse
from heron.cli.client import Client, CliError
from heron.cli.options import Json, Wait
from heron.cli.output import emit, size
from heron.cli.task import finish
from heron.models.storage import DEVICE_CLASSES, VolumeFormat

app = typer.Typer(no_args_is_help=True, help="Volumes in pools.")

FORMAT = parse.Choice(f.value for f in VolumeFormat)
DEVICE_CLASS = parse.Choice(DEVICE_CLASSES)


def _memory_of(v: dict[str, Any]) -> str | None:
    state = v.get("state_of")
    return f"memory of snapshot {state['snapshot']}" if state else None


VOLUME_COLUMNS = [
    ("name", lambda v: v["name"]),
    ("format", lambda v: v["format"]),
    ("size", lambda v: size(v["size"])),
    ("allocated", lambda v: size(v["allocation"])),
    ("state", lambda v: v["state"]),
    ("node", lambda v: v["node"] or "shared"),
    ("redundancy", lambda v: redundancy(v.get("health"))),
    ("vm", lambda v: v["attached_to"] or _memory_of(v)),
    ("id", lambda v: v["id"]),
]

Format = Annotated[
    str | None,
    typer.Option(
        "--format", parser=FORMAT, metavar="FORMAT", help="qcow2 or raw (default: the pool's)"
    ),
]
Size = Annotated[int, typer.Argument(parser=parse.size, metavar="SIZE")]


def redundancy(health: dict[str, Any] | None) -> str:
    """An ardfs volume's health in a few words ('' for other pools)."""
    if not health:
        return ""
    if health.get("move_left"):
        return f"{health['state']}, moving: {health['move_left']} copies to make"
    if health.get("stale_chunks"):
        return f"{health['state']}, {health['stale_chunks']} blocks to rebuild"
    return health["state"]


@app.command("list")
def volume_list(pool: str, as_json: Json = False) -> None:
    emit(Client().get(f"/pools/{pool}/volumes"), as_json, VOLUME_COLUMNS)


@app.command("create")
def volume_create(
    pool: str,
    name: str,
    size_bytes: Size,
    fmt: Format = None,
    node: Annotated[str | None, typer.Option()] = None,
    device_class: Annotated[
        str | None,
        typer.Option(
            parser=DEVICE_CLASS,
            metavar="CLASS",
            help="ardfs: place it only on nvme, ssd or hdd disks (default: the pool's class)",
        ),
    ] = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    client = Client()
    body = {"name": name, "size": size_bytes, "format": fmt, "node": node}
    if device_class:
        body["device_class"] = device_class
    finish(client, client.post(f"/pools/{pool}/volumes", json=body), wait, as_json)


@app.command("import")
def volume_import(
    pool: str,
    name: str,
    path: Annotated[str | None, typer.Option(help="image file on the node")] = None,
    upload: Annotated[Path | None, typer.Option(help="local file to upload")] = None,
    fmt: Format = None,
    node: Annotated[str | None, typer.Option()] = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Import an image into a new volume: from a path on a node, or uploaded from here."""
    if (path is None) == (upload is None):
        raise CliError("give exactly one of --path or --upload", 2)
    if upload is not None and not upload.is_file():
        raise CliError(f"{upload} is not a file", 2)
    client = Client()
    if upload is not None:
        with open(upload, "rb") as handle:
            reply = client.post(
                f"/pools/{pool}/volumes/upload",
                data={"name": name, **({"format": fmt} if fmt else {})},
                files={"file": (upload.name, handle)},
            )
    else:
        body = {"name": name, "path": path, "format": fmt, "node": node}
        reply = client.post(f"/pools/{pool}/volumes/import", json=body)
    finish(client, reply, wait, as_json)


@app.command("resize")
def volume_resize(
    pool: str,
    volume: str,
    size_bytes: Size,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Grow a volume (online if its VM runs)."""
    client = Client()
    reply = client.request("PATCH", f"/pools/{pool}/volumes/{volume}", json={"size": size_bytes})
    finish(client, reply, wait, as_json)


@app.command("delete")
def volume_delete(pool: str, volume: str, wait: Wait = True, as_json: Json = False) -> None:
    client = Client()
    finish(client, client.request("DELETE", f"/pools/{pool}/volumes/{volume}"), wait, as_json)


EXPORT_COLUMNS = [
    ("volume", lambda e: e["volume_name"]),
    ("target", lambda e: e["iqn"]),
    ("portal", lambda e: e["portal"]),
    ("state", lambda e: (e["error"] and f"{e['state']}: {e['error']}") or e["state"]),
    ("chap user", lambda e: e["chap_user"]),
    ("initiators", lambda e: ", ".join(e["initiators"])),
]


@app.command("export")
def volume_export(
    pool: str,
    volume: str,
    initiator: Annotated[
        list[str], typer.Option(help="an initiator IQN allowed to log in (repeat for more)")
    ],
    chap_user: Annotated[str | None, typer.Option(help="default: the volume's name")] = None,
    chap_secret: Annotated[
        str | None, typer.Option(help="12-16 characters; default: one is generated")
    ] = None,
    as_json: Json = False,
) -> None:
    """Export an ARDFS volume as an iSCSI LUN. The CHAP secret is printed once: keep it."""
    body = {"initiators": initiator, "chap_user": chap_user, "chap_secret": chap_secret}
    made = Client().post(f"/pools/{pool}/volumes/{volume}/iscsi", json=body)
    if as_json:
        emit(made, True)
        return
    emit(made, False, EXPORT_COLUMNS)
    typer.echo(f"CHAP secret (shown only now): {made['chap_secret']}")


@app.command("unexport")
def volume_unexport(pool: str, volume: str) -> None:
    """Stop an iSCSI export: the target and its sessions go."""
    Client().request("DELETE", f"/pools/{pool}/volumes/{volume}/iscsi")


@app.command("exports")
def volume_exports(pool: str, as_json: Json = False) -> None:
    """The pool's iSCSI exports and their portals."""
    emit(Client().get(f"/pools/{pool}/iscsi"), as_json, EXPORT_COLUMNS)
