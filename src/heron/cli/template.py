"""heron vm template / heron vm clone: templates, and VMs cloned from VMs or snapshots."""

from typing import Annotated, Any

import typer

from heron.cli import cloudinit
from heron.cli.client import Client
from heron.cli.options import Json, Wait
from heron.cli.output import emit
from heron.cli.task import finish


def vm_template(
    vm: str,
    off: Annotated[
        bool, typer.Option("--off", help="make the template a VM again (no linked clones left)")
    ] = False,
    as_json: Json = False,
) -> None:
    """Make a stopped VM a template: it never starts or migrates; VMs are cloned from it."""
    data = Client().request("PUT", f"/vms/{vm}/template", json={"template": not off})
    emit(data, as_json, [("name", lambda v: v["name"]), ("template", lambda v: v["template"])])


def vm_clone(
    vm: Annotated[str, typer.Argument(help="the VM or template to clone")],
    name: Annotated[str, typer.Argument(help="the new VM's name")],
    snapshot: Annotated[
        str | None, typer.Option(help="clone this snapshot of the VM (its name or id)")
    ] = None,
    linked: Annotated[
        bool, typer.Option("--linked", help="share the source's blocks copy-on-write")
    ] = False,
    full_if_unlinked: Annotated[
        bool,
        typer.Option("--full-if-unlinked", help="with --linked: copy what cannot be linked"),
    ] = False,
    pool: Annotated[
        str | None, typer.Option(help="pool for full copies (default: the source's)")
    ] = None,
    node: Annotated[str | None, typer.Option(help="where it runs (default: chosen)")] = None,
    start: Annotated[bool, typer.Option("--start", help="start it once made")] = False,
    hostname: cloudinit.Hostname = None,
    user: cloudinit.User = None,
    ssh_key: cloudinit.SshKey = None,
    password_hash: cloudinit.PasswordHash = None,
    sudo: cloudinit.Sudo = False,
    user_data: cloudinit.UserData = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """A new VM with copies of a VM's disks (a template's, a stopped VM's or a snapshot's)
    and its hardware; fresh MACs and addresses. The cloud-init options give it a seed of its
    own; without them it has the source's (with its own hostname and instance-id)."""
    body: dict[str, Any] = {
        "name": name,
        "snapshot": snapshot,
        "linked": linked,
        "full_if_unlinked": full_if_unlinked,
        "pool": pool,
        "node": node,
        "start": start,
    }
    given = cloudinit.seed(hostname, user, ssh_key or [], password_hash, sudo, user_data)
    if given:
        body["cloud_init"] = given
    client = Client()
    reply = client.post(f"/vms/{vm}/clone", json={k: v for k, v in body.items() if v is not None})
    finish(client, reply, wait, as_json)
