"""The cloud-init options of heron vm create, update and clone, declared once: the seed a
command sends from them, and how an update changes the seed a VM has."""

from pathlib import Path
from typing import Annotated, Any

import typer

Hostname = Annotated[
    str | None, typer.Option(help="cloud-init: its hostname (default: the VM's name)")
]
User = Annotated[str | None, typer.Option(help="cloud-init: a user to make")]
SshKey = Annotated[
    list[str] | None,
    typer.Option(help="cloud-init: the user's SSH public key, or @FILE holding it"),
]
PasswordHash = Annotated[
    str | None, typer.Option(help="cloud-init: the user's crypt(3) password hash")
]
Sudo = Annotated[bool, typer.Option("--sudo", help="cloud-init: the user may sudo")]
UserData = Annotated[Path | None, typer.Option(help="cloud-init: a file of more user-data")]


def seed(
    hostname: str | None,
    user: str | None,
    keys: list[str],
    password_hash: str | None,
    sudo: bool,
    user_data: Path | None,
) -> dict[str, Any]:
    """The cloud_init fields the options give (empty: none given)."""
    given: dict[str, Any] = {}
    if hostname:
        given["hostname"] = hostname
    if (keys or password_hash or sudo) and not user:
        raise typer.BadParameter("--ssh-key, --password-hash and --sudo are for a --user")
    if user:
        texts = [read(k[1:], "--ssh-key").strip() if k.startswith("@") else k for k in keys]
        given["users"] = [
            {"name": user, "ssh_keys": texts, "password_hash": password_hash, "sudo": sudo}
        ]
    if user_data is not None:
        given["user_data"] = read(str(user_data), "--user-data")
    return given


# What `updated` returns when the update leaves the VM's seed as it is.
UNCHANGED: Any = object()


def updated(current: dict[str, Any] | None, on: bool | None, given: dict[str, Any]) -> Any:
    """The cloud_init an update sends: the VM's seed (`current`) with the fields given replaced
    (a --user replaces its users), made if it had none; None (`--no-cloud-init`) removes it;
    UNCHANGED when neither is asked for."""
    if on is False:
        if given:
            raise typer.BadParameter("--no-cloud-init takes no other cloud-init option")
        return None
    if not given and on is None:
        return UNCHANGED
    return {**(current or {}), **given}


def read(path: str, option: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"{option}: cannot read {path}: {exc}") from exc
