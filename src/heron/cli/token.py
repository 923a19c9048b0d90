"""heron token: API tokens for automation."""

import typer

from heron.cli.client import Client
from heron.cli.options import Json
from heron.cli.output import emit

app = typer.Typer(no_args_is_help=True, help="API tokens for automation.")


@app.command("create")
def token_create(description: str = "", as_json: Json = False) -> None:
    emit(
        Client().post("/tokens", json={"description": description}),
        as_json,
        [("id", lambda t: t["id"]), ("token", lambda t: t["token"])],
    )


@app.command("list")
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


@app.command("revoke")
def token_revoke(token_id: str) -> None:
    Client().request("DELETE", f"/tokens/{token_id}")
