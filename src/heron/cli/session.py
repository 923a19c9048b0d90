"""heron login: where the API is and who we are, remembered for the next commands.

Over HTTPS the cluster's CA is pinned at the first login, as SSH pins a host key: its
fingerprint is shown to be confirmed (or given with --ca-fingerprint, or the CA itself with
--ca-file), before any password is sent; later logins and commands refuse a node whose
certificate does not chain to it.
"""

import getpass
from typing import Annotated

import httpx
import typer

from heron.cli import client as api
from heron.cli import parse
from heron.cli.client import Client, fail


def login(
    url: Annotated[str, typer.Option(envvar="HERON_URL", help="API address")],
    username: Annotated[str, typer.Option("--username", "-u")] = "admin",
    password: Annotated[str | None, typer.Option(envvar="HERON_PASSWORD")] = None,
    ca_file: Annotated[
        str | None,
        typer.Option(
            "--ca-file",
            parser=parse.certificate_file,
            help="trust this CA certificate (PEM) for the cluster, without asking",
        ),
    ] = None,
    ca_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--ca-fingerprint",
            parser=parse.fingerprint,
            help="the SHA-256 fingerprint the cluster CA must have (as `openssl x509 "
            "-fingerprint -sha256` prints it); no question is asked",
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="trust the cluster CA seen at a first login unasked"),
    ] = False,
) -> None:
    """Log in and remember the API address, the session token and the cluster CA."""
    url = url.rstrip("/")
    ca = None
    if url.startswith("https://"):
        ca = ca_file or _offered_ca(url)
        _check_trust(url, ca, ca_fingerprint, yes, given=ca_file is not None)
    secret = password if password is not None else getpass.getpass("password: ")
    client = Client(url=url, token="-", ca=ca)
    reply = client.post("/auth/login", json={"username": username, "password": secret})
    api.save(url, reply["token"], ca)
    typer.echo(f"logged in to {url} as {reply['user']} ({reply['role']})")


def _offered_ca(url: str) -> str:
    """The CA the server says is the cluster's. Fetched unchecked (nothing is trusted yet, and
    nothing secret is sent); what makes it trusted is its fingerprint, checked next, and then
    every connection is verified against it."""
    try:
        reply = httpx.get(f"{url}/api/v1/auth/ca", verify=False, timeout=30)
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}")
    if reply.status_code != 200:
        fail(f"{url} offers no cluster CA ({reply.status_code}): is it a Heron node?")
    try:
        return str(reply.json()["certificate"])
    except (ValueError, KeyError, TypeError):
        fail(f"{url} offers no cluster CA: is it a Heron node?")


def _check_trust(url: str, ca: str, expected: str | None, yes: bool, given: bool) -> None:
    """Trust `ca` for `url`, or exit: a changed CA needs the new one named explicitly."""
    seen = api.fingerprint(ca)
    if expected is not None:
        if seen != expected:
            fail(f"the cluster CA of {url} has fingerprint {seen}, not {expected}: refused")
        return
    if given:
        return
    known = api.pinned(url)
    if known is not None:
        if api.fingerprint(known) == seen:
            return
        fail(
            f"the cluster CA of {url} changed: {api.fingerprint(known)} was pinned, {seen} is "
            f"offered; refused (if that is expected, log in with --ca-fingerprint {seen})"
        )
    if yes:
        typer.echo(f"trusting the cluster CA of {url}: SHA-256 {seen}", err=True)
        return
    typer.echo(f"The cluster CA of {url} is not known yet.\nSHA-256 fingerprint: {seen}", err=True)
    try:
        trusted = typer.confirm("Trust it?", default=False, err=True)
    except typer.Abort:  # no answer (no terminal, end of input)
        trusted = False
    if not trusted:
        fail(f"not trusted, nothing sent: to trust it, log in with --ca-fingerprint {seen}")
