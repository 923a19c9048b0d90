"""heron user: users and their roles, passwords, login rules and login locks."""

import getpass
import time
from typing import Annotated, get_args

import typer

from heron.cli import parse
from heron.cli.client import Client, fail
from heron.cli.options import Json
from heron.cli.output import emit
from heron.models.auth import Role, ScopeKind

app = typer.Typer(no_args_is_help=True, help="Users and roles.")

ROLE = parse.Choice(r.value for r in Role)
# A user's cluster-wide role, or none (the user reaches only what grants give).
USER_ROLE = parse.Choice([*(r.value for r in Role), "none"])
LOCK_KIND = parse.Choice(["user", "address"])
SCOPE = parse.Choice(get_args(ScopeKind))


@app.command("list")
def user_list(as_json: Json = False) -> None:
    emit(
        Client().get("/users"),
        as_json,
        [("name", lambda u: u["name"]), ("role", lambda u: u["role"] or "none")],
    )


@app.command("create")
def user_create(
    name: str,
    role: Annotated[
        str,
        typer.Option(
            parser=USER_ROLE,
            metavar="ROLE",
            help="cluster-wide; none: only what grants give (heron user grant)",
        ),
    ] = "viewer",
    password: Annotated[str | None, typer.Option(envvar="HERON_NEW_PASSWORD")] = None,
) -> None:
    secret = password if password is not None else getpass.getpass("new password: ")
    body = {"name": name, "role": None if role == "none" else role, "password": secret}
    Client().post("/users", json=body)


@app.command("grant")
def user_grant(
    user: str,
    role: Annotated[str, typer.Argument(parser=ROLE, metavar="ROLE")],
    scope: Annotated[
        str, typer.Argument(parser=SCOPE, metavar="SCOPE", help="group, pool or switch")
    ],
    target: Annotated[str, typer.Argument(metavar="NAME", help="the group, pool or switch")],
    as_json: Json = False,
) -> None:
    """Grant USER the ROLE on one VM group, pool or switch, on top of their cluster-wide
    role: `heron user grant ann operator group web`."""
    body = {"user": user, "role": role, "scope": scope, "name": target}
    emit(Client().post("/grants", json=body), as_json, [("id", lambda g: g["id"])])


@app.command("grants")
def user_grants(as_json: Json = False) -> None:
    """Roles granted on scopes (an administrator sees all, others their own)."""
    emit(
        Client().get("/grants"),
        as_json,
        [
            ("id", lambda g: g["id"]),
            ("user", lambda g: g["user"]),
            ("role", lambda g: g["role"]),
            ("scope", lambda g: f"{g['scope']} {g['name']}"),
        ],
    )


@app.command("revoke")
def user_revoke(grant_id: str) -> None:
    """Take a grant back (its id from `heron user grants`)."""
    Client().request("DELETE", f"/grants/{grant_id}")


@app.command("delete")
def user_delete(name: str) -> None:
    Client().request("DELETE", f"/users/{name}")


@app.command("passwd")
def user_passwd(
    name: str,
    password: Annotated[str | None, typer.Option(envvar="HERON_NEW_PASSWORD")] = None,
    current_password: Annotated[
        str | None,
        typer.Option(
            envvar="HERON_CURRENT_PASSWORD",
            help="your current password (asked for when you change your own)",
        ),
    ] = None,
    keep_api_tokens: Annotated[
        bool, typer.Option(help="keep the user's API tokens working (sessions end anyway)")
    ] = False,
) -> None:
    """Set a user's password. Every session of the user ends (yours too if it is your own:
    log in again); API tokens end as well unless --keep-api-tokens."""
    client = Client()
    if current_password is None and client.get("/auth/whoami")["user"] == name:
        current_password = getpass.getpass("current password: ")
    secret = password if password is not None else getpass.getpass("new password: ")
    body = {"password": secret, "keep_api_tokens": keep_api_tokens}
    if current_password is not None:
        body["current_password"] = current_password
    reply = client.request("PUT", f"/users/{name}/password", json=body)
    typer.echo(f"password of {name} changed; {reply['revoked']} token(s) revoked")


@app.command("lockouts")
def user_lockouts(as_json: Json = False) -> None:
    """User names and client addresses with recent failed logins, and their locks."""
    now = time.time()
    emit(
        Client().get("/lockouts"),
        as_json,
        [
            ("kind", lambda r: r["kind"]),
            ("subject", lambda r: r["subject"]),
            ("failures", lambda r: r["failures"]),
            (
                "locked",
                lambda r: f"{round(r['locked_until'] - now)} s more" if r["locked_until"] else "no",
            ),
        ],
    )


@app.command("unlock")
def user_unlock(
    subject: str,
    kind: Annotated[
        str, typer.Option(parser=LOCK_KIND, metavar="KIND", help="user (a user name) or address")
    ] = "user",
) -> None:
    """Lift the lock of a user name (or with --kind address, a client address)."""
    client = Client()
    found = [r for r in client.get("/lockouts") if r["kind"] == kind and r["subject"] == subject]
    if not found:
        fail(f"no failed logins recorded for {kind} {subject}")
    client.request("DELETE", f"/lockouts/{found[0]['id']}")


@app.command("rules")
def user_rules(
    max_failures: Annotated[
        int | None, typer.Option(min=1, max=1000, help="failed logins that lock a user name")
    ] = None,
    max_failures_per_address: Annotated[
        int | None,
        typer.Option(min=1, max=100000, help="failed logins that lock a client address"),
    ] = None,
    window: Annotated[
        float | None,
        typer.Option(parser=parse.seconds, metavar="SECONDS", help="over which failures count"),
    ] = None,
    lockout: Annotated[
        float | None,
        typer.Option(parser=parse.seconds, metavar="SECONDS", help="how long a lock lasts"),
    ] = None,
    min_password_length: Annotated[int | None, typer.Option(min=8, max=256)] = None,
    refuse_user_name: Annotated[
        bool | None,
        typer.Option(
            "--refuse-user-name/--allow-user-name", help="a password equal to the user name"
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Login protection and password rules: without options, show them; with them, change
    them (the cluster settings' `login`)."""
    client = Client()
    settings = client.get("/cluster/settings")
    changes = {
        "max_failures": max_failures,
        "max_failures_per_address": max_failures_per_address,
        "window": window,
        "lockout": lockout,
        "min_password_length": min_password_length,
        "refuse_user_name": refuse_user_name,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if changes:
        login = {**settings["login"], **changes}
        settings = client.request("PUT", "/cluster/settings", json={"login": login})
    emit(settings["login"], as_json)
