"""heron switch: distributed virtual switches, realised on every node."""

import time
from typing import Annotated, Any, get_args

import typer

from heron.cli import parse
from heron.cli.client import Client
from heron.cli.options import Json
from heron.cli.output import emit
from heron.models.network import Switch

app = typer.Typer(no_args_is_help=True, help="Distributed virtual switches.")

BACKEND = parse.Choice(get_args(Switch.model_fields["backend"].annotation))
COLUMNS = [
    ("name", lambda s: s["name"]),
    ("backend", lambda s: s["backend"]),
    ("mtu", lambda s: s["mtu"]),
    ("uplinks", lambda s: " ".join(f"{n}={i}" for n, i in sorted(s["uplinks"].items())) or "-"),
]
Uplinks = Annotated[
    list[dict] | None,  # type: ignore[type-arg]  # typer rejects dict[str, str] here
    typer.Option(
        "--uplink",
        parser=parse.uplink,
        metavar="NODE=IF",
        help="a node's physical interface or bond (repeat per node); NODE= removes it",
    ),
]


def _uplinks(given: list[dict[str, str]] | None, start: dict[str, str]) -> dict[str, str]:
    out = dict(start)
    for item in given or []:
        for node, interface in item.items():
            if interface:
                out[node] = interface
            else:
                out.pop(node, None)
    return out


@app.command("list")
def switch_list(as_json: Json = False) -> None:
    emit(Client().get("/switches"), as_json, COLUMNS)


@app.command("show")
def switch_show(name: str, as_json: Json = False) -> None:
    emit(Client().get(f"/switches/{name}"), as_json, COLUMNS)


@app.command("status")
def switch_status(as_json: Json = False) -> None:
    """Whether every node has built every switch as defined, and what is wrong where not."""
    rows = []
    for node in Client().get("/switches/status"):
        for switch, state in sorted(node["switches"].items()):
            rows.append(
                {"node": node["node"], "node_up": node.get("node_up", True), "switch": switch}
                | state
            )
    emit(
        rows,
        as_json,
        [
            ("node", lambda r: r["node"]),
            ("switch", lambda r: r["switch"]),
            ("in sync", _in_sync),
            ("ports", lambda r: r["ports"]),
            ("problems", lambda r: "; ".join(r["problems"]) or "-"),
            ("drift put back", _repaired),
        ],
    )


def _in_sync(row: dict[str, Any]) -> str:
    said = "yes" if row["in_sync"] else "no"
    return said if row["node_up"] else f"{said} (node down: its last report)"


def _repaired(row: dict[str, Any]) -> str:
    if not row.get("repaired_at"):
        return "-"
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["repaired_at"]))
    return f"{at}: {'; '.join(row['repaired'])}"


@app.command("create")
def switch_create(
    name: str,
    backend: Annotated[
        str,
        typer.Option(parser=BACKEND, metavar="BACKEND", help="bridge (Linux) or ovs"),
    ] = "bridge",
    mtu: Annotated[int, typer.Option(min=576, max=9216, help="of the uplinks")] = 1500,
    uplink: Uplinks = None,
    description: Annotated[str, typer.Option(help="free text")] = "",
    as_json: Json = False,
) -> None:
    body = {
        "name": name,
        "backend": backend,
        "mtu": mtu,
        "uplinks": _uplinks(uplink, {}),
        "description": description,
    }
    emit(Client().post("/switches", json=body), as_json, COLUMNS)


@app.command("set")
def switch_set(
    name: str,
    mtu: Annotated[int | None, typer.Option(min=576, max=9216, help="of the uplinks")] = None,
    uplink: Uplinks = None,
    description: Annotated[str | None, typer.Option(help="free text")] = None,
    as_json: Json = False,
) -> None:
    """Change a switch; what is not given stays."""
    client = Client()
    body: dict[str, Any] = {}
    if mtu is not None:
        body["mtu"] = mtu
    if uplink:
        body["uplinks"] = _uplinks(uplink, client.get(f"/switches/{name}")["uplinks"])
    if description is not None:
        body["description"] = description
    if not body:
        raise typer.BadParameter("give --mtu, --uplink or --description")
    emit(client.request("PATCH", f"/switches/{name}", json=body), as_json, COLUMNS)


@app.command("delete")
def switch_delete(name: str) -> None:
    Client().request("DELETE", f"/switches/{name}")
