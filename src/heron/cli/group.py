"""heron group: VM groups and their placement rule (affinity, anti-affinity)."""

from typing import Annotated, Any, get_args

import typer

from heron.cli import parse
from heron.cli.client import Client
from heron.cli.options import Json
from heron.cli.output import emit
from heron.models.group import VMGroup

app = typer.Typer(no_args_is_help=True, help="VM groups: affinity and anti-affinity.")

PLACEMENT = parse.Choice(get_args(VMGroup.model_fields["placement"].annotation))


def _ha(policy: dict[str, Any] | None) -> str:
    if policy is None:
        return "-"
    return f"priority {policy['priority']}" if policy["enabled"] else "off"


COLUMNS = [
    ("name", lambda g: g["name"]),
    ("placement", lambda g: g["placement"]),
    ("strict", lambda g: g["strict"]),
    ("ha", lambda g: _ha(g["ha"])),
]


@app.command("list")
def group_list(as_json: Json = False) -> None:
    emit(Client().get("/groups"), as_json, COLUMNS)


@app.command("create")
def group_create(
    name: str,
    placement: Annotated[
        str,
        typer.Option(
            parser=PLACEMENT,
            metavar="PLACEMENT",
            help="spread (one per node), together, or none",
        ),
    ] = "spread",
    strict: Annotated[bool, typer.Option("--strict/--soft", help="must, or should")] = True,
) -> None:
    Client().post("/groups", json={"name": name, "placement": placement, "strict": strict})


@app.command("set")
def group_set(
    name: str,
    placement: Annotated[
        str | None,
        typer.Option(
            parser=PLACEMENT,
            metavar="PLACEMENT",
            help="spread (one per node), together, or none",
        ),
    ] = None,
    strict: Annotated[
        bool | None,
        typer.Option("--strict/--soft", " /--no-strict", help="must, or should"),
    ] = None,
    ha: Annotated[
        bool | None,
        typer.Option(
            "--ha/--no-ha", help="restart members without their own HA elsewhere if a node fails"
        ),
    ] = None,
    ha_priority: Annotated[
        int | None,
        typer.Option(min=0, max=100, help="with --ha: higher restarts first (default 50)"),
    ] = None,
    clear_ha: Annotated[
        bool, typer.Option("--clear-ha", help="members follow their own HA policy only")
    ] = False,
    as_json: Json = False,
) -> None:
    """Change a group's rules; what is not given stays. A strict rule that the members break
    where they run now is refused, with who is where."""
    body: dict[str, Any] = {}
    if placement is not None:
        body["placement"] = placement
    if strict is not None:
        body["strict"] = strict
    if clear_ha and (ha is not None or ha_priority is not None):
        raise typer.BadParameter("--clear-ha takes the group's HA policy away: give it alone")
    if clear_ha:
        body["ha"] = None
    elif ha is not None or ha_priority is not None:
        policy: dict[str, Any] = {"enabled": True if ha is None else ha}
        if ha_priority is not None:
            policy["priority"] = ha_priority
        body["ha"] = policy
    if not body:
        raise typer.BadParameter("give --placement, --strict/--soft, --ha/--no-ha or --clear-ha")
    emit(Client().request("PATCH", f"/groups/{name}", json=body), as_json, COLUMNS)


@app.command("delete")
def group_delete(name: str) -> None:
    Client().request("DELETE", f"/groups/{name}")
