"""What an Open vSwitch database holds of its bridges, ports and interfaces: read in one
`ovs-vsctl --format=json` call (READ_STATE) and parsed here, without I/O.

ovs-vsctl prints OVSDB's JSON notation: ["uuid", id], ["set", [...]] and ["map", [[k, v]...]]
for sets and maps, except that a set of one value is that value alone.
"""

import json
from dataclasses import dataclass, field
from typing import Any

OWNER_KEY = "heron-owner"

_COLUMNS = {
    "Bridge": "_uuid,name,ports,datapath_type,fail_mode,external_ids",
    "Port": "_uuid,name,interfaces,tag,trunks,vlan_mode,protected,external_ids",
    "Interface": "_uuid,name,type,ifindex,ofport,mtu_request,external_ids",
}
# The ovs-vsctl arguments (after the --db option) that print the whole state, one JSON
# document per table in the order of _COLUMNS.
READ_STATE: list[str] = ["--format=json"] + [
    arg
    for table, columns in _COLUMNS.items()
    for arg in ("--", f"--columns={columns}", "list", table)
]


@dataclass(frozen=True)
class Interface:
    name: str
    type: str = ""
    ifindex: int | None = None
    mtu_request: int | None = None
    external_ids: dict[str, str] = field(default_factory=dict)
    ofport: int | None = None  # its OpenFlow port number (-1: it could not be added)


@dataclass(frozen=True)
class Port:
    name: str
    bridge: str | None = None
    tag: int | None = None
    trunks: tuple[int, ...] = ()
    vlan_mode: str | None = None
    protected: bool = False
    external_ids: dict[str, str] = field(default_factory=dict)
    interfaces: tuple[str, ...] = ()

    @property
    def owned(self) -> bool:
        return self.external_ids.get(OWNER_KEY) == "true"


@dataclass(frozen=True)
class Bridge:
    name: str
    datapath_type: str = ""
    external_ids: dict[str, str] = field(default_factory=dict)
    ports: tuple[str, ...] = ()
    fail_mode: str | None = None

    @property
    def owned(self) -> bool:
        return self.external_ids.get(OWNER_KEY) == "true"


@dataclass(frozen=True)
class State:
    """Every bridge, port and interface of one database, by name (names are unique in OVS)."""

    bridges: dict[str, Bridge] = field(default_factory=dict)
    ports: dict[str, Port] = field(default_factory=dict)
    interfaces: dict[str, Interface] = field(default_factory=dict)


def _atoms(value: Any) -> list[Any]:
    """The values of a set column (a lone value stands for a set of one)."""
    if isinstance(value, list) and value and value[0] == "set":
        return [_atom(v) for v in value[1]]
    return [_atom(value)]


def _atom(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 2 and value[0] in ("uuid", "named-uuid"):
        return value[1]
    return value


def _optional(value: Any) -> Any:
    """An optional column (a set of at most one value): its value or None."""
    atoms = _atoms(value)
    return atoms[0] if atoms else None


def _map(value: Any) -> dict[str, str]:
    if isinstance(value, list) and value and value[0] == "map":
        return {str(k): str(v) for k, v in value[1]}
    return {}


def _rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    headings = document["headings"]
    return [dict(zip(headings, row, strict=True)) for row in document["data"]]


def _documents(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    documents = []
    position = 0
    text = text.strip()
    while position < len(text):
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
        while position < len(text) and text[position].isspace():
            position += 1
    return documents


def parse_state(text: str) -> State:
    """The State printed by `ovs-vsctl <READ_STATE>`."""
    bridge_rows, port_rows, interface_rows = (_rows(d) for d in _documents(text))
    interfaces_by_uuid = {
        row["_uuid"][1]: Interface(
            name=row["name"],
            type=row["type"],
            ifindex=_optional(row["ifindex"]),
            mtu_request=_optional(row["mtu_request"]),
            external_ids=_map(row["external_ids"]),
            ofport=_optional(row.get("ofport", ["set", []])),
        )
        for row in interface_rows
    }
    port_names = {row["_uuid"][1]: row["name"] for row in port_rows}
    bridge_of: dict[str, str] = {}
    bridges = {}
    for row in bridge_rows:
        names = tuple(sorted(port_names[u] for u in _atoms(row["ports"]) if u in port_names))
        bridge_of.update((name, row["name"]) for name in names)
        bridges[row["name"]] = Bridge(
            name=row["name"],
            datapath_type=row["datapath_type"],
            external_ids=_map(row["external_ids"]),
            ports=names,
            fail_mode=_optional(row.get("fail_mode", ["set", []])),
        )
    ports = {}
    for row in port_rows:
        vlan_mode = _optional(row["vlan_mode"])
        ports[row["name"]] = Port(
            name=row["name"],
            bridge=bridge_of.get(row["name"]),
            tag=_optional(row["tag"]),
            trunks=tuple(sorted(_atoms(row["trunks"]))),
            vlan_mode=vlan_mode,
            protected=bool(row["protected"]),
            external_ids=_map(row["external_ids"]),
            interfaces=tuple(
                sorted(
                    interfaces_by_uuid[u].name
                    for u in _atoms(row["interfaces"])
                    if u in interfaces_by_uuid
                )
            ),
        )
    interfaces = {i.name: i for i in interfaces_by_uuid.values()}
    return State(bridges, ports, interfaces)
