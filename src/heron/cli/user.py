"""heron user: users and their roles."""

import getpass
from typing import Annotated

import typer

from heron.cli import parse
from heron.cli.client import Client
from heron.cli.options import Json
from heron.cli.output import emit
from heron.models.auth import Role

app = typer.Typer(no_args_is_help=True, help="Users and roles.")

ROLE = parse.Choice(r.value for r in Role)


@app.command("list")
def user_list(as_json: Json = False) -> None:
    emit(
        Client().get("/users"),
        as_json,
        [("name", lambda u: u["name"]), ("role", lambda u: u["role"])],
    )


@app.command("create")
def user_create(
    name: str,
    role: Annotated[str, typer.Option(parser=ROLE, metavar="ROLE")] = "viewer",
    password: Annotated[str | None, typer.Option(envvar="HERON_NEW_PASSWORD")] = None,
) -> None:
    secret = password if password is not None else getpass.getpass("new password: ")
    Client().post("/users", json={"name": name, "role": role, "password": secret})


@app.command("delete")
def user_delete(name: str) -> None:
    Client().request("DELETE", f"/users/{name}")
