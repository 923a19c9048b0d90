"""heron token: API tokens for automation."""

import time
from typing import Annotated

import typer

from heron.cli.client import Client
from heron.cli.options import Json
from heron.cli.output import emit
from heron.cli.user import ROLE

app = typer.Typer(no_args_is_help=True, help="API tokens for automation.")


@app.command("create")
def token_create(
    description: str = "",
    role: Annotated[
        str | None,
        typer.Option(parser=ROLE, metavar="ROLE", help="a role below your own (default: your own)"),
    ] = None,
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, max=3650, help="days until it expires (default: never)")
    ] = None,
    as_json: Json = False,
) -> None:
    body: dict[str, object] = {"description": description}
    if role is not None:
        body["role"] = role
    if expires_in_days is not None:
        body["expires_in_days"] = expires_in_days
    emit(
        Client().post("/tokens", json=body),
        as_json,
        [("id", lambda t: t["id"]), ("role", lambda t: t["role"]), ("token", lambda t: t["token"])],
    )


@app.command("list")
def token_list(as_json: Json = False) -> None:
    emit(
        Client().get("/tokens"),
        as_json,
        [
            ("id", lambda t: t["id"]),
            ("user", lambda t: t["user"]),
            ("role", lambda t: t["role"]),
            ("kind", lambda t: t["kind"]),
            ("expires", lambda t: _when(t["expires_at"])),
            ("description", lambda t: t["description"]),
        ],
    )


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "never"


@app.command("revoke")
def token_revoke(token_id: str) -> None:
    Client().request("DELETE", f"/tokens/{token_id}")
