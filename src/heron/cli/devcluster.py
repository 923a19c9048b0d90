"""heron devcluster: a whole cluster on this machine, for development and tests."""

from pathlib import Path
from typing import Annotated, Any

import typer

from heron import devcluster as dev
from heron.cli.options import Json
from heron.cli.output import emit

app = typer.Typer(no_args_is_help=True, help="A whole cluster on this machine.")

Directory = Annotated[Path, typer.Option("--dir")]


@app.command("up")
def devcluster_up(
    nodes: Annotated[int, typer.Option(min=1, max=64)] = 3,
    directory: Directory = Path("heron-devcluster"),
    embedded_etcd: Annotated[
        bool, typer.Option("--embedded-etcd", help="etcd inside the nodes, grown as they join")
    ] = False,
    plain_etcd: Annotated[
        bool,
        typer.Option("--plain-etcd", help="etcd without TLS (as clusters before etcd's TLS were)"),
    ] = False,
    as_json: Json = False,
) -> None:
    """Start N agents and an etcd of 3 members (1 for one node) on loopback; etcd speaks
    TLS with client certificates of a CA the devcluster makes (in DIR/ca)."""
    cluster, token = dev.up(
        directory, nodes, embedded=embedded_etcd, etcd_tls=False if plain_etcd else None
    )
    data: dict[str, Any] = {
        "dir": cluster.dir,
        "token": token,
        "etcd": cluster.endpoints,
        "ca_file": str(cluster.ca_file),
        "nodes": [{"name": n.name, "url": n.url} for n in cluster.nodes],
    }
    if as_json:
        emit(data, True)
        return
    for node in data["nodes"]:
        typer.echo(f"{node['name']}  {node['url']}")
    typer.echo(
        f"export HERON_URL={cluster.nodes[0].url} HERON_TOKEN={token} "
        f"HERON_CA_FILE={cluster.ca_file}"
    )


@app.command("down")
def devcluster_down(directory: Directory = Path("heron-devcluster")) -> None:
    """Stop every agent, VM and etcd member of the devcluster."""
    dev.down(directory)


@app.command("add-node")
def devcluster_add_node(directory: Directory = Path("heron-devcluster")) -> None:
    """Start one more node; it joins the running cluster."""
    node = dev.DevCluster.load(directory.resolve()).add_node()
    typer.echo(f"{node.name}  {node.url}")


@app.command("start-node")
def devcluster_start_node(name: str, directory: Directory = Path("heron-devcluster")) -> None:
    """Start one node's agent again (after it was stopped or killed)."""
    cluster = dev.DevCluster.load(directory.resolve())
    cluster.start_node(name)
    cluster.wait_api(cluster.node(name), 60)
