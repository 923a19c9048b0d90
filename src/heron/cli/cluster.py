"""heron cluster: the cluster as a whole, and its dynamic balancing (DRS)."""

from typing import Annotated

import typer

from heron.cli import parse
from heron.cli.client import Client
from heron.cli.options import Json
from heron.cli.output import emit

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
            ("drs", lambda c: "on" if c["settings"]["drs"]["enabled"] else "off"),
        ],
    )


@app.command("drs")
def cluster_drs(
    enable: Annotated[bool, typer.Option("--enable/--disable")],
    threshold: Annotated[
        float | None, typer.Option(help="memory load spread that triggers")
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(parser=parse.seconds, metavar="SECONDS", help="seconds between checks"),
    ] = None,
) -> None:
    """Turn dynamic balancing on or off."""
    client = Client()
    settings = client.get("/cluster/settings")
    drs = {**settings["drs"], "enabled": enable}
    drs.update({k: v for k, v in (("threshold", threshold), ("interval", interval)) if v})
    client.request("PUT", "/cluster/settings", json={**settings, "drs": drs})
