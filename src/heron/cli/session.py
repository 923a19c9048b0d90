"""heron login: where the API is and who we are, remembered for the next commands."""

import getpass
from typing import Annotated

import typer

from heron.cli import client as api
from heron.cli.client import Client


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
