"""heron dr: disaster recovery inside the cluster: protect VMs, list them and their points,
restore a point as a new VM."""

import time
from typing import Annotated, Any

import typer

from heron.cli.client import Client
from heron.cli.options import Json, Wait
from heron.cli.output import emit, size
from heron.cli.task import finish

app = typer.Typer(no_args_is_help=True, help="Disaster recovery: protection and points.")


def _when(value: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else "-"


def _seconds(value: float | None) -> str:
    return f"{value:.0f} s" if value is not None else "-"


COLUMNS = [
    ("name", lambda r: r["name"]),
    ("protected", lambda r: "yes" if r["protected"] else "no"),
    ("interval", lambda r: _seconds(r["interval_seconds"])),
    ("keep", lambda r: r["retention"] if r["retention"] is not None else "-"),
    ("points", lambda r: r["points"]),
    ("last point", lambda r: _when(r["last_point_at"])),
    ("RPO", lambda r: _seconds(r["rpo_seconds"])),
    ("last round", lambda r: r["last_kind"] or "-"),
    ("changed", lambda r: size(r["last_bytes_written"])),
    ("error", lambda r: r["last_error"] or None),
]

POINT_COLUMNS = [
    ("id", lambda p: p["id"]),
    ("time", lambda p: _when(p["created"])),
    ("kind", lambda p: p["kind"]),
    ("disks", lambda p: ", ".join(f"{d} {size(s)}" for d, s in p["disks"].items())),
    ("read", lambda p: size(p.get("bytes_read"))),
    ("new in store", lambda p: size(p.get("bytes_written"))),
]


@app.command("list")
def dr_list(as_json: Json = False) -> None:
    """Every VM with its protection, newest point, RPO achieved and last round."""
    data: dict[str, Any] = Client().get("/dr/vms")
    emit(data if as_json else data["vms"], as_json, COLUMNS)


@app.command("protect")
def dr_protect(
    vm: str,
    interval: Annotated[int, typer.Option(help="seconds between rounds")] = 300,
    keep: Annotated[int, typer.Option(help="how many of the newest points are kept")] = 24,
    hourly: Annotated[int, typer.Option(help="and the newest point of N hours")] = 0,
    daily: Annotated[int, typer.Option(help="and the newest point of N days")] = 0,
    monthly: Annotated[int, typer.Option(help="and the newest point of N months")] = 0,
    as_json: Json = False,
) -> None:
    """Protect a VM (or change its policy): its node replicates it every INTERVAL seconds."""
    body = {
        "interval_seconds": interval,
        "retention": keep,
        "hourly": hourly,
        "daily": daily,
        "monthly": monthly,
    }
    data = Client().request("PUT", f"/dr/vms/{vm}/protection", json=body)
    emit(data, as_json, [("vm", lambda r: r["vm"]), ("policy", lambda r: r["policy"])])


@app.command("unprotect")
def dr_unprotect(vm: str) -> None:
    """Stop replicating a VM; its points stay, to be restored."""
    Client().request("DELETE", f"/dr/vms/{vm}/protection")


@app.command("points")
def dr_points(vm: str, as_json: Json = False) -> None:
    """A VM's points, oldest first (a VM deleted: by its id)."""
    data: dict[str, Any] = Client().get(f"/dr/vms/{vm}/points")
    emit(data if as_json else data["points"], as_json, POINT_COLUMNS)


@app.command("restore")
def dr_restore(
    vm: str,
    point: str,
    name: Annotated[str, typer.Option(help="name of the new VM")],
    pool: Annotated[str, typer.Option(help="pool for its disks")],
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Restore a point as a new VM (stopped, on the node whose store holds the point)."""
    client = Client()
    body = {"name": name, "pool": pool}
    finish(client, client.post(f"/dr/vms/{vm}/points/{point}/restore", json=body), wait, as_json)
