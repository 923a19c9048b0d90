"""heron cluster: the cluster as a whole, and its dynamic balancing (DRS)."""

import time
from collections.abc import Callable
from typing import Annotated, Any, get_args

import typer

from heron.cli import parse
from heron.cli.client import Client, fail
from heron.cli.options import Json
from heron.cli.output import emit, size
from heron.models.settings import DRSBasis, DRSMode

MODE = parse.Choice(get_args(DRSMode))
BASIS = parse.Choice(get_args(DRSBasis))

app = typer.Typer(no_args_is_help=True, help="The cluster as a whole.")


@app.command("show")
def cluster_show(as_json: Json = False) -> None:
    """The leader, the counts, and the settings."""
    client = Client()
    data = {**client.get("/cluster"), "settings": client.get("/cluster/settings")}
    emit(
        data,
        as_json,
        [
            ("leader", lambda c: c["leader"]),
            ("nodes", lambda c: c["nodes"]),
            ("vms", lambda c: c["vms"]),
            ("version", lambda c: c["version"]),
            ("drs", lambda c: c["settings"]["drs"]["mode"]),
            ("agent grace", lambda c: f"{c['settings']['ha']['agent_grace']:g} s"),
        ],
    )


@app.command("members")
def cluster_members(as_json: Json = False) -> None:
    """etcd's members: voters, learners, and which one leads raft."""
    emit(
        Client().get("/cluster/members"),
        as_json,
        [
            ("id", lambda m: m["id"]),
            ("name", lambda m: m["name"] or "(not started)"),
            ("role", lambda m: "learner" if m["learner"] else "voter"),
            ("leader", lambda m: "*" if m["leader"] else ""),
            ("peer", lambda m: ",".join(m["peer_urls"])),
            ("client", lambda m: ",".join(m["client_urls"])),
        ],
    )


@app.command("join")
def cluster_join(
    ttl: Annotated[
        float,
        typer.Option(
            parser=parse.seconds,
            metavar="SECONDS",
            help="how long the join token may be used (60 s to 7 days; once only)",
        ),
    ] = 3600,
    as_json: Json = False,
) -> None:
    """How to add a node: a one-time join token (when etcd speaks TLS), etcd's endpoints and
    the command lines to run on the new node, the token in them."""
    data = Client().post("/cluster/join", json={"ttl_seconds": int(ttl)})
    if as_json:
        emit(data, True)
        return
    typer.echo(f"etcd endpoints: {','.join(data['etcd_endpoints'])}")
    if data.get("token"):
        left = max(0, round(data["expires_at"] - time.time()))
        typer.echo(f"join token: {data['token']} (one use, expires in {left} s)")
        typer.echo(f"cluster CA SHA-256 fingerprint: {data['ca_fingerprint']}")
    for command in data["commands"]:
        typer.echo(f"\n{command['description']}:\n  {command['command']}")


@app.command("drs")
def cluster_drs(
    enable: Annotated[
        bool | None,
        typer.Option("--enable/--disable", help="the same as --mode automatic / --mode off"),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            parser=MODE, metavar="MODE", help="off, advise (only propose moves) or automatic"
        ),
    ] = None,
    basis: Annotated[
        str | None,
        typer.Option(
            parser=BASIS,
            metavar="BASIS",
            help="demand (CPU and memory the VMs were measured to use) or allocated (memory "
            "they were given)",
        ),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="spread of load (share of cores or memory) that triggers")
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(parser=parse.seconds, metavar="SECONDS", help="seconds between checks"),
    ] = None,
    decisions: Annotated[int, typer.Option(help="how many of its last decisions to show")] = 10,
    as_json: Json = False,
) -> None:
    """Dynamic balancing: without options, its state (loads, spread, the move it would make
    now, its last decisions); with them, change its settings (--mode advise: it only
    proposes, and `heron vm migrate` applies a proposal)."""
    client = Client()
    if enable is not None:
        if mode is not None:
            fail("give --mode or --enable/--disable, not both")
        mode = "automatic" if enable else "off"
    if mode is None and basis is None and threshold is None and interval is None:
        show_drs(client.get("/cluster/drs", params={"decisions": decisions}), as_json)
        return
    settings = client.get("/cluster/settings")
    drs = {k: v for k, v in settings["drs"].items() if k != "enabled"}  # the mode says it
    changes = {"mode": mode, "basis": basis, "threshold": threshold, "interval": interval}
    drs.update({k: v for k, v in changes.items() if v is not None})
    client.request("PUT", "/cluster/settings", json={"drs": drs})


@app.command("ha")
def cluster_ha(
    agent_grace: Annotated[
        float | None,
        typer.Option(
            parser=parse.seconds,
            metavar="SECONDS",
            help="how long a node's agent may be away while the node answers before its HA "
            "VMs are restarted elsewhere",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """High availability settings: without options, show them; with them, change them."""
    client = Client()
    settings = client.get("/cluster/settings")
    if agent_grace is not None:
        ha = {**settings["ha"], "agent_grace": agent_grace}
        settings = client.request("PUT", "/cluster/settings", json={"ha": ha})
    emit(settings["ha"], as_json, [("agent grace", lambda h: f"{h['agent_grace']:g} s")])


def show_drs(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(status, True)
        return
    drs = status["settings"]
    typer.echo(
        f"DRS {drs['mode']}: threshold {drs['threshold']:.0%}, every "
        f"{drs['interval']:g} s, {drs['hysteresis']} checks in a row, "
        f"{drs['max_concurrent']} at once"
    )
    weighed = "measured demand" if status["basis"] == "demand" else "allocated memory"
    note = f" ({status['basis_note']})" if status["basis_note"] else ""
    typer.echo(f"weighed: {weighed}{note}")
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("node", lambda n: n["node"] + (" (maintenance)" if n["maintenance"] else "")),
        ("memory", lambda n: size(n["memory_mib"] << 20)),
        ("given", lambda n: size(n["memory_used_mib"] << 20)),
    ]
    if status["basis"] == "demand":
        columns += [
            ("held", lambda n: size(int(n["memory_demand_mib"]) << 20)),
            ("cpu", lambda n: f"{n['cpu_demand']:.2f} of {n['cpus']} cores"),
        ]
    else:
        columns.append(("load", lambda n: f"{n['load']:.1%}"))
    emit(status["loads"], False, columns)
    over = "exceeds" if status["exceeded"] else "within"
    typer.echo(f"imbalance {status['spread']:.1%}: {over} the threshold")
    proposal = status["proposal"]
    typer.echo(f"proposal: {proposal['explanation'] if proposal else status['why_none']}")
    if status["decisions"]:
        typer.echo("last decisions:")
        emit(
            status["decisions"],
            False,
            [
                ("time", lambda d: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["time"]))),
                ("vm", lambda d: d["vm_name"] or d["vm"]),
                ("from", lambda d: d["source"]),
                ("to", lambda d: d["destination"]),
                ("task", lambda d: d["task"]),
                ("reason", lambda d: d["reason"]),
            ],
        )
