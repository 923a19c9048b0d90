"""heron import: bring VMs over from VMware ESXi and Hyper-V (sources, scans, imports)."""

from typing import Annotated, Any, get_args

import typer

from heron.cli import parse
from heron.cli.client import Client, fail
from heron.cli.options import Json
from heron.cli.output import emit, size
from heron.models.imports import SourceType

SOURCE_TYPE = parse.Choice(get_args(SourceType))
app = typer.Typer(no_args_is_help=True, help="Import VMs from VMware ESXi/vCenter and Hyper-V.")
source_app = typer.Typer(no_args_is_help=True, help="Where VMs are imported from.")
app.add_typer(source_app, name="source")

SOURCE_COLUMNS = [
    ("name", lambda s: s["name"]),
    ("type", lambda s: s["type"]),
    ("where", lambda s: _where(s)),
    ("node", lambda s: s.get("node") or "-"),
]


def _where(source: dict[str, Any]) -> str:
    if source["type"] == "vsphere":
        return f"{source['user']}@{source['host']}:{source['port']}"
    if source.get("server"):
        return f"{source['server']}:{source['path']}"
    return str(source["path"])


VM_COLUMNS = [
    ("name", lambda v: v["name"]),
    ("kind", lambda v: v["kind"]),
    ("vcpus", lambda v: v.get("vcpus") or "?"),
    ("memory", lambda v: size((v["memory_mib"] or 0) * 1024**2) if v.get("memory_mib") else "?"),
    ("firmware", lambda v: v.get("firmware") or "?"),
    ("os", lambda v: v["guest_os"].get("id") or v["guest_os"]["family"]),
    ("disks", lambda v: ", ".join(size(d.get("capacity")) for d in v["disks"])),
    ("networks", lambda v: ", ".join(sorted({n.get("network") or "-" for n in v["nics"]}))),
    ("import", lambda v: "; ".join(b["message"] for b in v["blockers"]) or "yes"),
    ("path", lambda v: v["path"]),
]
IMPORT_COLUMNS = [
    ("vm", lambda v: v["name"]),
    ("node", lambda v: v["node"]),
    ("task", lambda v: v["task"][:8] or "-"),
    ("disks", lambda v: ", ".join(v["disks"])),
    ("changes", lambda v: "; ".join(v["warnings"])),
]


@source_app.command("add")
def source_add(
    name: str,
    directory: Annotated[
        str | None, typer.Option("--dir", help="a folder on --node (a copied datastore)")
    ] = None,
    nfs: Annotated[
        str | None, typer.Option("--nfs", help="an NFS export, SERVER:/PATH (mounted read-only)")
    ] = None,
    node: Annotated[
        str | None, typer.Option(help="the node that holds the folder (or reads the export)")
    ] = None,
    source_type: Annotated[
        str | None,
        typer.Option("--type", parser=SOURCE_TYPE, help="default: as --dir, --nfs or --host say"),
    ] = None,
    host: Annotated[str | None, typer.Option(help="vsphere: the ESXi host or vCenter")] = None,
    port: Annotated[int | None, typer.Option(help="vsphere: its HTTPS port (443)")] = None,
    user: Annotated[str | None, typer.Option(help="vsphere: the user to log in as")] = None,
    password: Annotated[
        str | None,
        typer.Option(
            envvar="HERON_SOURCE_PASSWORD", help="vsphere: its password (asked when not given)"
        ),
    ] = None,
    fingerprint: Annotated[
        str | None,
        typer.Option(
            parser=parse.fingerprint,
            help="vsphere: the SHA-256 fingerprint its certificate must have (as `openssl "
            "x509 -fingerprint -sha256` prints it); without it, the one it shows now is "
            "pinned and printed, to be compared",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Add a source: a folder on a node, an NFS datastore, or an ESXi host or vCenter read
    over its API (--type vsphere --host H --user U)."""
    given = (host, user, port, fingerprint)
    if source_type == "vsphere" or any(v is not None for v in given):
        if directory is not None or nfs is not None or node is not None:
            fail("a vsphere source has no --dir, --nfs nor --node")
        if password is None and host is not None and user is not None:
            password = typer.prompt(f"password of {user} on {host}", hide_input=True)
        reply = Client().post(
            "/imports/sources",
            json={
                "name": name,
                "type": "vsphere",
                "host": host,
                "port": port or 443,
                "user": user,
                "password": password,
                "fingerprint": fingerprint,
            },
        )
        if not as_json and fingerprint is None and reply.get("fingerprint"):
            pin = reply["fingerprint"]
            shown = ":".join(pin[i : i + 2] for i in range(0, len(pin), 2)).upper()
            typer.echo(f"pinned {host}'s certificate, SHA-256 fingerprint {shown}", err=True)
            typer.echo("compare it with the server's; a changed one is refused", err=True)
        emit(reply, as_json, SOURCE_COLUMNS)
        return
    if directory is not None and nfs is not None:
        fail("give --dir PATH (with --node) or --nfs SERVER:/PATH, not both")
    if source_type is None and directory is None and nfs is None:
        fail("give --dir PATH (with --node), --nfs SERVER:/PATH or --type vsphere --host HOST")
    body: dict[str, Any] = {"name": name, "node": node}
    if nfs is not None:
        server, _, path = nfs.partition(":")
        if not server or not path:
            fail(f"--nfs {nfs}: give SERVER:/PATH")
        body |= {"type": "nfs", "server": server, "path": path}
    else:  # a folder, or a type the API says what it lacks of
        body |= {"type": source_type or "directory", "path": directory}
    emit(Client().post("/imports/sources", json=body), as_json, SOURCE_COLUMNS)


@source_app.command("list")
def source_list(as_json: Json = False) -> None:
    emit(Client().get("/imports/sources"), as_json, SOURCE_COLUMNS)


@source_app.command("remove")
def source_remove(name: str) -> None:
    """Forget a source and its scan (the files stay where they are)."""
    Client().request("DELETE", f"/imports/sources/{name}")


@app.command("scan")
def scan(source: str, as_json: Json = False) -> None:
    """Read a source again (with a progress bar) and list the VMs it holds."""
    client = Client()
    ref = client.post(f"/imports/sources/{source}/scan")
    client.wait_task(ref["task"], show=not as_json)
    _show_scan(client.get(f"/imports/sources/{source}/scan"), as_json)


@app.command("vms")
def vms(source: str, as_json: Json = False) -> None:
    """The VMs the source's last scan found, and whether each can be imported."""
    _show_scan(Client().get(f"/imports/sources/{source}/scan"), as_json)


def _show_scan(scan: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(scan, True)
        return
    emit(scan["report"]["vms"], False, VM_COLUMNS)
    for failure in scan["report"]["failures"]:
        typer.echo(f"not read: {failure['path']}: {failure['reason']}", err=True)


def _networks(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        source, sep, target = pair.rpartition("=")
        if not sep or not target:
            fail(f"--network {pair}: give SOURCE=NETWORK (a Heron network, or none)")
        mapping[source] = target
    return mapping


@app.command("start")
def start(
    source: str,
    vms: Annotated[list[str], typer.Argument(help="VMs by name or path, as `vms` lists them")],
    pool: Annotated[str, typer.Option(help="the pool the disks are converted into")],
    network: Annotated[
        list[str] | None,
        typer.Option(help="SOURCE=NETWORK, for each source network of the VMs (repeat)"),
    ] = None,
    keep_macs: Annotated[bool, typer.Option(help="keep the NICs' MAC addresses")] = True,
    power_off: Annotated[
        bool, typer.Option(help="vsphere: power off a source VM that runs (else refused)")
    ] = False,
    warm: Annotated[
        bool,
        typer.Option(
            help="vsphere: copy running VMs warm, stopping them only for the cutover "
            "(changed-block tracking is turned on)"
        ),
    ] = False,
    warm_interval: Annotated[
        int, typer.Option(help="warm: seconds between two rounds of changes", min=1)
    ] = 300,
    warm_small_enough: Annotated[
        int, typer.Option(help="warm: cut over once a round copies at most this many MiB", min=0)
    ] = 64,
    warm_max_rounds: Annotated[
        int, typer.Option(help="warm: cut over after this many rounds at the latest", min=1)
    ] = 8,
    guest_fix: Annotated[
        bool, typer.Option(help="fix Linux guests to boot on virtio (otherwise SATA and e1000)")
    ] = True,
    start_vms: Annotated[bool, typer.Option("--start", help="start each VM once imported")] = False,
    node: Annotated[str | None, typer.Option(help="where the VMs go (NFS sources)")] = None,
    name: Annotated[
        str | None, typer.Option(help="the VM's name in Heron (one VM; default: its own)")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="check and plan only")] = False,
    wait: Annotated[bool, typer.Option(help="follow the imports to their end")] = False,
    as_json: Json = False,
) -> None:
    """Queue imports of scanned VMs; each is a task (see `heron import list`)."""
    client = Client()
    found = client.get(f"/imports/sources/{source}/scan")["report"]["vms"]
    if name is not None and len(vms) != 1:
        fail("--name names one VM: import the others without it")
    items = []
    for ref in vms:
        matches = [v for v in found if ref in (v["path"], v["name"])]
        if len(matches) != 1:
            fail(f"{ref}: {'no' if not matches else 'more than one'} VM of that name or path")
        items.append({"vm": matches[0]["path"], "source_name": matches[0]["name"], "name": name})
    body = {
        "source": source,
        "vms": items,
        "pool": pool,
        "networks": _networks(network or []),
        "keep_macs": keep_macs,
        "power_off": power_off,
        "warm": {
            "interval_seconds": warm_interval,
            "small_enough_mib": warm_small_enough,
            "max_rounds": warm_max_rounds,
        }
        if warm
        else None,
        "guest_fix": "auto" if guest_fix else "none",
        "start": start_vms,
        "node": node,
        "dry_run": dry_run,
    }
    reply = client.post("/imports", json=body)
    if wait and not dry_run:
        failed = []
        for item in reply["vms"]:
            try:
                client.wait_task(item["task"], show=not as_json)
            except Exception as exc:  # one failed import does not stop the others
                failed.append(f"{item['name']}: {exc}")
        if failed:
            emit(reply["vms"], as_json, IMPORT_COLUMNS)
            fail("; ".join(failed))
    emit(reply["vms"], as_json, IMPORT_COLUMNS)


@app.command("list")
def imports_list(as_json: Json = False) -> None:
    """Imports (queued, running and recent), newest first."""
    tasks = [t for t in Client().get("/tasks", params={"limit": 1000}) if t["kind"] == "v2v.import"]
    emit(
        tasks,
        as_json,
        [
            ("task", lambda t: t["id"][:8]),
            ("vm", lambda t: t["target"][:8]),
            ("vm file", lambda t: t["params"].get("vm", "")),
            ("state", lambda t: t["state"]),
            ("progress", lambda t: f"{t['progress'] * 100:.0f}%"),
            ("last", lambda t: t["error"] or (t["log"][-1] if t["log"] else "")),
        ],
    )
