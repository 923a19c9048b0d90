"""heron network: port groups of the switches (untagged, VLAN, trunk, VXLAN) and subnets."""

from typing import Annotated, Any

import typer

from heron.cli import parse
from heron.cli.client import Client
from heron.cli.options import Json
from heron.cli.output import emit

app = typer.Typer(no_args_is_help=True, help="Networks (port groups) and their subnets.")


def _carries(n: dict[str, Any]) -> str:
    if n["kind"] == "vlan":
        return f"vlan {n['vlan']}"
    if n["kind"] == "trunk":
        return "trunk " + ",".join(n["trunk"])
    if n["kind"] == "vxlan":
        return f"vxlan {n['vni']}"
    return "untagged"


COLUMNS = [
    ("name", lambda n: n["name"]),
    ("switch", lambda n: n["switch"]),
    ("carries", _carries),
    ("mtu", lambda n: n["mtu"] or "-"),
    ("subnet", lambda n: n["subnet"]["cidr"] if n["subnet"] else "-"),
    ("gateway", lambda n: (n["subnet"] or {}).get("gateway") or "-"),
]

Cidr = Annotated[
    str | None, typer.Option(parser=parse.cidr, metavar="CIDR", help="e.g. 10.1.0.0/24")
]
Gateway = Annotated[
    str | None, typer.Option(parser=parse.ipv4, metavar="IP", help="the guests' router")
]
Dns = Annotated[
    list[str] | None,
    typer.Option(parser=parse.ipv4, metavar="IP", help="a DNS server for the guests (repeat)"),
]
Ranges = Annotated[
    list[dict] | None,  # type: ignore[type-arg]  # typer rejects dict[str, str] here
    typer.Option(
        "--range",
        parser=parse.address_range,
        metavar="FIRST-LAST",
        help="addresses the NICs get (repeat); default: the whole subnet",
    ),
]
Dhcp = Annotated[bool, typer.Option("--dhcp/--no-dhcp", help="serve addresses by DHCP")]
Mtu = Annotated[
    int | None,
    typer.Option(min=576, max=9216, help="the guests' MTU (default: the switch's, -50 on vxlan)"),
]


def _subnet(
    cidr: str, gateway: str | None, dns: list[str] | None, ranges: Any, dhcp: bool
) -> dict[str, Any]:
    return {
        "cidr": cidr,
        "gateway": gateway,
        "dns": dns or [],
        "ranges": ranges or [],
        "dhcp": dhcp,
    }


@app.command("list")
def network_list(as_json: Json = False) -> None:
    emit(Client().get("/networks"), as_json, COLUMNS)


@app.command("show")
def network_show(name: str, as_json: Json = False) -> None:
    emit(Client().get(f"/networks/{name}"), as_json, COLUMNS)


@app.command("create")
def network_create(
    name: str,
    switch: Annotated[str, typer.Option(help="the switch it is a port group of")],
    vlan: Annotated[int | None, typer.Option(min=1, max=4094, help="a VLAN network")] = None,
    trunk: Annotated[
        str | None,
        typer.Option(parser=parse.vlans, metavar="VLANS", help="a trunk of VLANs: 100,200-299"),
    ] = None,
    vni: Annotated[
        int | None, typer.Option(min=1, max=2**24 - 1, help="a VXLAN segment across nodes")
    ] = None,
    mtu: Mtu = None,
    subnet: Cidr = None,
    gateway: Gateway = None,
    dns: Dns = None,
    address_range: Ranges = None,
    dhcp: Dhcp = True,
    description: Annotated[str, typer.Option(help="free text")] = "",
    as_json: Json = False,
) -> None:
    """Create a network: untagged, or --vlan, --trunk or --vni; --subnet gives its NICs
    addresses (and DHCP on every node)."""
    kinds = [k for k, given in (("vlan", vlan), ("trunk", trunk), ("vxlan", vni)) if given]
    if len(kinds) > 1:
        raise typer.BadParameter("give at most one of --vlan, --trunk and --vni")
    if subnet is None and (gateway or dns or address_range):
        raise typer.BadParameter("--gateway, --dns and --range need --subnet")
    body: dict[str, Any] = {
        "name": name,
        "switch": switch,
        "kind": kinds[0] if kinds else "untagged",
        "vlan": vlan,
        "trunk": trunk or [],
        "vni": vni,
        "mtu": mtu,
        "description": description,
    }
    if subnet:
        body["subnet"] = _subnet(subnet, gateway, dns, address_range, dhcp)
    emit(Client().post("/networks", json=body), as_json, COLUMNS)


@app.command("set")
def network_set(
    name: str,
    mtu: Mtu = None,
    subnet: Cidr = None,
    gateway: Gateway = None,
    dns: Dns = None,
    address_range: Ranges = None,
    dhcp: Annotated[bool | None, typer.Option("--dhcp/--no-dhcp", help="serve by DHCP")] = None,
    no_subnet: Annotated[bool, typer.Option("--no-subnet", help="remove the subnet")] = False,
    default_mtu: Annotated[
        bool, typer.Option("--default-mtu", help="the MTU back to the switch's default")
    ] = False,
    description: Annotated[str | None, typer.Option(help="free text")] = None,
    as_json: Json = False,
) -> None:
    """Change a network; what is not given stays. Subnet options change its subnet."""
    client = Client()
    body: dict[str, Any] = {}
    if mtu is not None and default_mtu:
        raise typer.BadParameter("give --mtu or --default-mtu, not both")
    if mtu is not None or default_mtu:
        body["mtu"] = mtu
    if description is not None:
        body["description"] = description
    if no_subnet:
        body["subnet"] = None
    elif subnet or gateway or dns or address_range or dhcp is not None:
        now = client.get(f"/networks/{name}")["subnet"] or {}
        if not (subnet or now):
            raise typer.BadParameter("the network has no subnet: give --subnet")
        body["subnet"] = {
            **now,
            **_subnet(
                subnet or now["cidr"],
                gateway or now.get("gateway"),
                dns or now.get("dns"),
                address_range or now.get("ranges"),
                now.get("dhcp", True) if dhcp is None else dhcp,
            ),
        }
    if not body:
        raise typer.BadParameter("give what to change (see --help)")
    emit(client.request("PATCH", f"/networks/{name}", json=body), as_json, COLUMNS)


@app.command("delete")
def network_delete(name: str) -> None:
    Client().request("DELETE", f"/networks/{name}")
