"""heron secgroup: security groups, stateful rules for the NICs naming them."""

from typing import Annotated, Any, get_args

import typer

from heron.cli import parse
from heron.cli.client import Client
from heron.cli.options import Json
from heron.cli.output import emit
from heron.models.network import Direction, Protocol

app = typer.Typer(
    no_args_is_help=True,
    help="Security groups: what NICs naming them may receive (and send).",
)

DIRECTION = parse.Choice(get_args(Direction))
PROTOCOL = parse.Choice(get_args(Protocol))
COLUMNS = [
    ("name", lambda g: g["name"]),
    ("rules", lambda g: len(g["rules"])),
    ("description", lambda g: g["description"] or "-"),
]
RULE_COLUMNS = [
    ("rule", lambda r: r["index"]),
    ("direction", lambda r: r["direction"]),
    ("protocol", lambda r: r["protocol"]),
    ("ports", lambda r: r["ports"] or "-"),
    (
        "remote",
        lambda r: r["remote"] or (f"group {r['remote_group']}" if r["remote_group"] else "any"),
    ),
    ("description", lambda r: r["description"] or "-"),
]


def _rules(group: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(group, True, COLUMNS)
    else:
        emit([{"index": i, **r} for i, r in enumerate(group["rules"])], False, RULE_COLUMNS)


@app.command("list")
def secgroup_list(as_json: Json = False) -> None:
    emit(Client().get("/security-groups"), as_json, COLUMNS)


@app.command("show")
def secgroup_show(name: str, as_json: Json = False) -> None:
    """A group's rules, numbered as rule-remove takes them."""
    _rules(Client().get(f"/security-groups/{name}"), as_json)


@app.command("create")
def secgroup_create(
    name: str,
    description: Annotated[str, typer.Option(help="free text")] = "",
    as_json: Json = False,
) -> None:
    """A group without rules: its NICs receive only replies (add rules with rule-add)."""
    body = {"name": name, "description": description}
    emit(Client().post("/security-groups", json=body), as_json, COLUMNS)


@app.command("set")
def secgroup_set(
    name: str,
    description: Annotated[str, typer.Option(help="free text")],
    as_json: Json = False,
) -> None:
    body = {"description": description}
    emit(Client().request("PATCH", f"/security-groups/{name}", json=body), as_json, COLUMNS)


@app.command("delete")
def secgroup_delete(name: str) -> None:
    """Delete a group no NIC and no other group's rule names."""
    Client().request("DELETE", f"/security-groups/{name}")


@app.command("rule-add")
def secgroup_rule_add(
    name: str,
    direction: Annotated[
        str, typer.Option(parser=DIRECTION, metavar="DIR", help="in (to the VM) or out")
    ] = "in",
    protocol: Annotated[
        str, typer.Option(parser=PROTOCOL, metavar="PROTO", help="any, tcp, udp or icmp")
    ] = "any",
    ports: Annotated[
        str | None,
        typer.Option(parser=parse.ports, metavar="PORTS", help="tcp/udp: 22 or 1000-2000"),
    ] = None,
    remote: Annotated[
        str | None,
        typer.Option(parser=parse.remote, metavar="CIDR", help="from/to this network only"),
    ] = None,
    remote_group: Annotated[
        str | None, typer.Option(help="from/to the NICs of this security group only")
    ] = None,
    description: Annotated[str, typer.Option(help="free text")] = "",
    as_json: Json = False,
) -> None:
    """Allow some traffic; applied at once to every NIC of the group."""
    body = {
        "direction": direction,
        "protocol": protocol,
        "ports": ports,
        "remote": remote,
        "remote_group": remote_group,
        "description": description,
    }
    _rules(Client().post(f"/security-groups/{name}/rules", json=body), as_json)


@app.command("rule-remove")
def secgroup_rule_remove(
    name: str,
    index: Annotated[int, typer.Argument(metavar="RULE", min=0, help="as `show` numbers it")],
    as_json: Json = False,
) -> None:
    _rules(Client().request("DELETE", f"/security-groups/{name}/rules/{index}"), as_json)
