"""heron group: VM groups and their placement rule (affinity, anti-affinity)."""

from typing import Annotated, get_args

import typer

from heron.cli import parse
from heron.cli.client import Client
from heron.cli.options import Json
from heron.cli.output import emit
from heron.models.group import VMGroup

app = typer.Typer(no_args_is_help=True, help="VM groups: affinity and anti-affinity.")

PLACEMENT = parse.Choice(get_args(VMGroup.model_fields["placement"].annotation))


@app.command("list")
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


@app.command("delete")
def group_delete(name: str) -> None:
    Client().request("DELETE", f"/groups/{name}")
