"""heron vm: virtual machines, their power, placement and serial console."""

import sys
from typing import Annotated, Any, get_args

import typer

from heron.cli import cloudinit, console, parse, snapshot, template
from heron.cli.client import Client
from heron.cli.options import Json, Wait
from heron.cli.output import emit, size
from heron.cli.task import finish
from heron.models.vm import DiskBus, Hardware, NicModel

app = typer.Typer(no_args_is_help=True, help="Virtual machines.")
app.add_typer(snapshot.app, name="snapshot")
app.command("template")(template.vm_template)
app.command("clone")(template.vm_clone)

VM_COLUMNS = [
    ("name", lambda v: v["name"]),
    ("state", lambda v: v["state"]),
    ("power", lambda v: v["power"]),
    ("node", lambda v: v["node"]),
    ("vcpus", lambda v: v["spec"]["vcpus"]),
    ("memory", lambda v: size(v["spec"]["memory_mib"] << 20)),
    ("pid", lambda v: (v["status"] or {}).get("pid")),
    ("vnc", lambda v: (v["status"] or {}).get("vnc")),
    ("pending", lambda v: ", ".join(v.get("pending") or []) or None),
    ("id", lambda v: v["id"]),
]

FIRMWARE = parse.Choice(get_args(Hardware.model_fields["firmware"].annotation))
BUS = parse.Choice(get_args(DiskBus))

# Room to grow while running, and limits; 0 for a limit takes it away (in an update).
MaxVcpus = Annotated[
    int | None, typer.Option(min=1, help="vCPUs it may grow to while running (reserved)")
]
MaxMemory = Annotated[
    int | None,
    typer.Option(
        parser=parse.mebibytes, metavar="SIZE", help="memory it may grow to while running"
    ),
]
CpuWeight = Annotated[
    int | None, typer.Option(min=0, help="CPU share against other VMs, 100 normal (0: default)")
]
CpuLimit = Annotated[
    int | None, typer.Option(min=0, help="most CPU, percent of one host CPU (0: no limit)")
]
MemoryLimit = Annotated[
    int | None,
    typer.Option(parser=parse.mebibytes, metavar="SIZE", help="most host memory its QEMU uses"),
]
NoMemoryLimit = Annotated[
    bool, typer.Option("--no-memory-limit", help="take its memory limit away")
]
Iops = Annotated[int | None, typer.Option(min=0, help="I/O operations/s (0: no limit)")]
IopsBurst = Annotated[int | None, typer.Option(min=0, help="I/O operations/s for a burst")]
Mbps = Annotated[int | None, typer.Option(min=0, help="MiB/s read + written (0: no limit)")]
MbpsBurst = Annotated[int | None, typer.Option(min=0, help="MiB/s for a burst")]


def _limits(**values: int | None) -> dict[str, int | None]:
    """The limits given; 0 (no limit) is sent as null."""
    return {k: v or None for k, v in values.items() if v is not None}


def _hardware_result(client: Client, view: dict[str, Any], wait: bool, as_json: bool) -> None:
    """The VM after a change, once the task giving it to the running guest has ended."""
    if view.get("task") and wait:
        client.wait_task(view["task"], show=not as_json)
        view = {**client.get(f"/vms/{view['id']}"), "task": view["task"]}
    emit(view, as_json, VM_COLUMNS)


@app.command("list")
def vm_list(
    node: Annotated[str | None, typer.Option(help="only this node's")] = None, as_json: Json = False
) -> None:
    emit(Client().get("/vms", params={"node": node} if node else None), as_json, VM_COLUMNS)


def _guest_agent(v: dict[str, Any]) -> str | None:
    agent = (v["status"] or {}).get("guest_agent")
    if agent is None:
        return None  # off, or its QEMU has no agent channel
    version = f" {agent['version']}" if agent.get("version") else ""
    return f"connected{version}" if agent["connected"] else f"not connected{version}"


def _migration(v: dict[str, Any]) -> str | None:
    """Its migration record: one under way, or one its target has not closed yet."""
    record = v.get("migration")
    if not record:
        return None
    error = f": {record['error']}" if record.get("error") else ""
    return f"{record['source']} -> {record['target']}, {record['state']}{error}"


SHOW_COLUMNS = [
    *VM_COLUMNS[:-1],
    ("guest agent", _guest_agent),
    ("template", lambda v: v.get("template") or None),
    ("migration", _migration),
    VM_COLUMNS[-1],
]


@app.command("show")
def vm_show(vm: str, as_json: Json = False) -> None:
    data = Client().get(f"/vms/{vm}")
    emit(data, True) if as_json else emit(data, False, SHOW_COLUMNS)


@app.command("create")
def vm_create(
    name: str,
    vcpus: Annotated[int, typer.Option(help="virtual CPUs")] = 1,
    memory: Annotated[
        int,
        typer.Option(
            parser=parse.mebibytes,
            metavar="SIZE",
            show_default="512M",
            help="memory, e.g. 512M or 2G",
        ),
    ] = 512,
    disk: Annotated[
        list[dict] | None,  # type: ignore[type-arg]  # typer rejects dict[str, Any] here
        typer.Option(
            parser=parse.disk,
            metavar="SPEC",
            help="pool:SIZE, pool:from=POOL/IMAGE or vol=POOL/NAME; ',bus=scsi' etc. may follow",
        ),
    ] = None,
    nic: Annotated[
        list[dict] | None,  # type: ignore[type-arg]  # typer rejects dict[str, Any] here
        typer.Option(parser=parse.nic, metavar="SPEC", help="user or none, ',model=e1000'"),
    ] = None,
    firmware: Annotated[
        str, typer.Option(parser=FIRMWARE, metavar="FIRMWARE", help="bios or uefi")
    ] = "bios",
    machine: Annotated[str, typer.Option(help="q35 or pc")] = "q35",
    node: Annotated[str | None, typer.Option(help="run on this node (default: chosen)")] = None,
    start: Annotated[bool, typer.Option("--start", help="start it once created")] = False,
    ha: Annotated[
        bool, typer.Option("--ha", help="restart it elsewhere if its node fails")
    ] = False,
    group: Annotated[str | None, typer.Option(help="VM group (placement rule)")] = None,
    max_vcpus: MaxVcpus = None,
    max_memory: MaxMemory = None,
    cpu_weight: CpuWeight = None,
    cpu_limit: CpuLimit = None,
    memory_limit: MemoryLimit = None,
    count: Annotated[int, typer.Option(help="create NAME-001..NAME-N from this template")] = 0,
    template: Annotated[
        str | None,
        typer.Option(help="with --count: clone a template VM (its hardware, disks and NICs)"),
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="with --template: full copies, not linked clones")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="with --count: only show where")
    ] = False,
    cloud_init: Annotated[
        bool, typer.Option("--cloud-init", help="give the guest a cloud-init seed")
    ] = False,
    hostname: cloudinit.Hostname = None,
    user: cloudinit.User = None,
    ssh_key: cloudinit.SshKey = None,
    password_hash: cloudinit.PasswordHash = None,
    sudo: cloudinit.Sudo = False,
    user_data: cloudinit.UserData = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Create a VM and its disks (or --count of them, spread over the nodes)."""
    body: dict[str, Any] = {
        "name": name,
        "vcpus": vcpus,
        "memory_mib": memory,
        "disks": disk or [],
        "nics": nic or [],
        "firmware": firmware,
        "machine": machine,
        "start": start,
    }
    if node:
        body["node"] = node
    body.update({"ha": {"enabled": ha}, "group": group})
    body |= _limits(
        max_vcpus=max_vcpus,
        max_memory_mib=max_memory,
        cpu_weight=cpu_weight,
        cpu_limit=cpu_limit,
        memory_limit_mib=memory_limit,
    )
    seed = cloudinit.seed(hostname, user, ssh_key or [], password_hash, sudo, user_data)
    if cloud_init or seed:
        body["cloud_init"] = seed
    client = Client()
    if template is not None and not count:
        raise typer.BadParameter("--template is for --count (one clone: heron vm clone)")
    if not count:
        finish(client, client.post("/vms", json=body), wait, as_json)
        return
    batch = {**body, "count": count, "dry_run": dry_run}
    if template is not None:
        batch.update(template=template, linked=not full, disks=[], nics=[])
    elif full:
        raise typer.BadParameter("--full is for --template")
    reply = client.post("/vms/batch", json=batch)
    if wait and not dry_run:
        for item in reply["vms"]:
            client.wait_task(item["task"], show=not as_json)
    emit(
        reply["vms"],
        as_json,
        [
            ("name", lambda v: v["name"]),
            ("node", lambda v: v["node"]),
            ("id", lambda v: v["vm"] or "(dry run)"),
        ],
    )


def _action(action: str) -> None:
    def command(
        vm: str,
        wait: Wait = True,
        as_json: Json = False,
        timeout: Annotated[
            float,
            typer.Option(
                parser=parse.seconds, metavar="SECONDS", help="shutdown: seconds before forcing"
            ),
        ] = 60,
    ) -> None:
        client = Client()
        body = {"timeout": timeout} if action == "shutdown" else None
        finish(client, client.post(f"/vms/{vm}/actions/{action}", json=body), wait, as_json)

    command.__doc__ = {
        "start": "Start a VM.",
        "stop": "Power a VM off at once.",
        "shutdown": "Shut a VM down through ACPI, forcing it after --timeout.",
        "reboot": "Reset a running VM.",
        "pause": "Pause a running VM.",
        "resume": "Resume a paused VM.",
    }[action]
    app.command(action)(command)


for _name in ("start", "stop", "shutdown", "reboot", "pause", "resume"):
    _action(_name)


@app.command("migrate")
def vm_migrate(
    vm: str,
    target: Annotated[str | None, typer.Option(help="node to move to (default: chosen)")] = None,
    max_downtime: Annotated[int, typer.Option(help="longest guest pause, ms")] = 300,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Live-migrate a running VM to another node."""
    client = Client()
    body = {"target": target, "max_downtime_ms": max_downtime}
    finish(client, client.post(f"/vms/{vm}/actions/migrate", json=body), wait, as_json)


@app.command("update")
def vm_update(
    vm: str,
    vcpus: Annotated[int | None, typer.Option()] = None,
    memory: Annotated[int | None, typer.Option(parser=parse.mebibytes, metavar="SIZE")] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    group: Annotated[str | None, typer.Option(help="move it into this VM group")] = None,
    no_group: Annotated[bool, typer.Option("--no-group", help="take it out of its group")] = False,
    ha: Annotated[
        bool | None, typer.Option("--ha/--no-ha", help="restart it elsewhere if its node fails")
    ] = None,
    ha_priority: Annotated[int | None, typer.Option(help="0-100, higher restarts first")] = None,
    guest_agent: Annotated[
        bool | None,
        typer.Option("--guest-agent/--no-guest-agent", help="the guest agent's channel"),
    ] = None,
    max_vcpus: MaxVcpus = None,
    max_memory: MaxMemory = None,
    cpu_weight: CpuWeight = None,
    cpu_limit: CpuLimit = None,
    memory_limit: MemoryLimit = None,
    no_memory_limit: NoMemoryLimit = False,
    cloud_init: Annotated[
        bool | None,
        typer.Option(
            "--cloud-init/--no-cloud-init",
            help="give it a cloud-init seed (the options below change it), or take it away",
        ),
    ] = None,
    hostname: cloudinit.Hostname = None,
    user: cloudinit.User = None,
    ssh_key: cloudinit.SshKey = None,
    password_hash: cloudinit.PasswordHash = None,
    sudo: cloudinit.Sudo = False,
    user_data: cloudinit.UserData = None,
    revision: Annotated[
        int | None, typer.Option(help="refuse if the VM changed since this revision")
    ] = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Change a VM. A running VM gets more vCPUs and memory (up to its maxima) and its CPU
    and memory limits at once; other hardware at its next start (shown as pending until
    then); name, description, group and HA policy at once. The cloud-init options change the
    VM's seed field by field (a --user replaces its users); the guest reads it at its next
    start."""
    if group is not None and no_group:
        raise typer.BadParameter("give --group or --no-group, not both")
    given = cloudinit.seed(hostname, user, ssh_key or [], password_hash, sudo, user_data)
    client = Client()
    body: dict[str, Any] = {
        "vcpus": vcpus,
        "name": name,
        "description": description,
        "revision": revision,
        "memory_mib": memory,
        "group": group,
        "guest_agent": guest_agent,
    }
    body = {k: v for k, v in body.items() if v is not None}
    body |= _limits(
        max_vcpus=max_vcpus,
        max_memory_mib=max_memory,
        cpu_weight=cpu_weight,
        cpu_limit=cpu_limit,
        memory_limit_mib=memory_limit,
    )
    if no_memory_limit:
        body["memory_limit_mib"] = None
    if no_group:
        body["group"] = None
    if cloud_init is not None or given:
        current = None if cloud_init is False else client.get(f"/vms/{vm}")["spec"]["cloud_init"]
        body["cloud_init"] = cloudinit.updated(current, cloud_init, given)
    if ha is not None or ha_priority is not None:
        current = client.get(f"/vms/{vm}")["spec"]["ha"]
        body["ha"] = {
            "enabled": current["enabled"] if ha is None else ha,
            "priority": current["priority"] if ha_priority is None else ha_priority,
        }
    _hardware_result(client, client.request("PATCH", f"/vms/{vm}", json=body), wait, as_json)


disk_app = typer.Typer(no_args_is_help=True, help="A VM's disks.")
app.add_typer(disk_app, name="disk")


@disk_app.command("attach")
def disk_attach(
    vm: str,
    volume: Annotated[str, typer.Argument(help="pool/name or id of a free, ready volume")],
    bus: Annotated[str, typer.Option(parser=BUS, help="virtio, scsi, sata or ide")] = "virtio",
    iops: Iops = None,
    iops_burst: IopsBurst = None,
    mbps: Mbps = None,
    mbps_burst: MbpsBurst = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Give a VM a volume as its next disk: a running VM gets a virtio disk plugged in at
    once, others at its next start."""
    qos = _limits(iops=iops, iops_burst=iops_burst, mbps=mbps, mbps_burst=mbps_burst)
    client = Client()
    body = {"volume": volume, "bus": bus, "qos": qos}
    _hardware_result(client, client.post(f"/vms/{vm}/disks", json=body), wait, as_json)


DiskIndex = Annotated[int, typer.Argument(metavar="INDEX", help="0 for disk0")]


@disk_app.command("limit")
def disk_limit(
    vm: str,
    index: DiskIndex,
    iops: Iops = None,
    iops_burst: IopsBurst = None,
    mbps: Mbps = None,
    mbps_burst: MbpsBurst = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Set a disk's I/O limits (those not given: none); a running VM gets them at once."""
    qos = _limits(iops=iops, iops_burst=iops_burst, mbps=mbps, mbps_burst=mbps_burst)
    client = Client()
    reply = client.request("PATCH", f"/vms/{vm}/disks/{index}", json={"qos": qos})
    _hardware_result(client, reply, wait, as_json)


@disk_app.command("detach")
def disk_detach(vm: str, index: DiskIndex, wait: Wait = True, as_json: Json = False) -> None:
    """Take a disk away; its volume stays in its pool. A running VM gives up only its last
    disk, one plugged in while it ran; others need it switched off."""
    client = Client()
    reply = client.request("DELETE", f"/vms/{vm}/disks/{index}")
    _hardware_result(client, reply, wait, as_json)


nic_app = typer.Typer(no_args_is_help=True, help="A VM's NICs (plugged in at once if it runs).")
app.add_typer(nic_app, name="nic")
NIC_COLUMNS = [
    ("nic", lambda n: n["index"]),
    ("network", lambda n: n["network"]),
    ("mac", lambda n: n["mac"] or "-"),
    ("address", lambda n: n["address"] or "-"),
    ("model", lambda n: n["model"]),
    ("link", lambda n: "up" if n["link_up"] else "down"),
    ("groups", lambda n: ",".join(n.get("security_groups") or []) or "-"),
]
NicIndex = Annotated[int, typer.Argument(metavar="INDEX", help="0 for the first NIC")]
SecurityGroups = Annotated[
    list[str] | None,
    typer.Option(
        "--security-group",
        help="filter it by this security group (repeat for more; replaces its groups)",
    ),
]
IngressMbps = Annotated[
    int | None, typer.Option(min=0, help="most it receives, Mbit/s (0: no limit)")
]
EgressMbps = Annotated[int | None, typer.Option(min=0, help="most it sends, Mbit/s (0: no limit)")]


def _filtering(groups: list[str] | None, ingress: int | None, egress: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if groups is not None:
        body["security_groups"] = groups
    for key, value in (("ingress_mbps", ingress), ("egress_mbps", egress)):
        if value is not None:
            body[key] = value or None
    return body


NIC_MODEL = parse.Choice(get_args(NicModel))
LINK = parse.Choice(("up", "down"))


def _nic_result(client: Client, reply: dict[str, Any], wait: bool, as_json: bool) -> None:
    """The VM's NICs after a change, once the task plugging it into the guest has ended."""
    if reply["task"] and wait:
        client.wait_task(reply["task"], show=not as_json)
        reply["vm"] = client.get(f"/vms/{reply['vm']['id']}")
    nics = [{"index": i, **n} for i, n in enumerate(reply["vm"]["spec"]["nics"])]
    emit(reply if as_json else nics, as_json, NIC_COLUMNS)


@nic_app.command("list")
def nic_list(vm: str, as_json: Json = False) -> None:
    nics = Client().get(f"/vms/{vm}")["spec"]["nics"]
    emit([{"index": i, **n} for i, n in enumerate(nics)], as_json, NIC_COLUMNS)


@nic_app.command("add")
def nic_add(
    vm: str,
    network: Annotated[str, typer.Option(help="a network, or user (NAT)")],
    model: Annotated[
        str, typer.Option(parser=NIC_MODEL, metavar="MODEL", help="virtio or e1000")
    ] = "virtio",
    mac: Annotated[str | None, typer.Option(help="default: given by the cluster")] = None,
    address: Annotated[
        str | None, typer.Option(parser=parse.ipv4, metavar="IP", help="default: the next free")
    ] = None,
    link: Annotated[str, typer.Option(parser=LINK, metavar="LINK", help="up or down")] = "up",
    security_group: SecurityGroups = None,
    ingress_mbps: IngressMbps = None,
    egress_mbps: EgressMbps = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Give a VM a NIC; a running VM gets it plugged in at once."""
    body = {"network": network, "model": model, "mac": mac, "address": address}
    body |= _filtering(security_group, ingress_mbps, egress_mbps)
    client = Client()
    reply = client.post(f"/vms/{vm}/nics", json={**body, "link_up": link == "up"})
    _nic_result(client, reply, wait, as_json)


@nic_app.command("set")
def nic_set(
    vm: str,
    index: NicIndex,
    network: Annotated[str | None, typer.Option(help="move it to this network")] = None,
    address: Annotated[
        str | None, typer.Option(parser=parse.ipv4, metavar="IP", help="a new address")
    ] = None,
    link: Annotated[
        str | None, typer.Option(parser=LINK, metavar="LINK", help="up or down (the cable)")
    ] = None,
    security_group: SecurityGroups = None,
    no_security_groups: Annotated[
        bool, typer.Option("--no-security-groups", help="no filtering at all")
    ] = False,
    ingress_mbps: IngressMbps = None,
    egress_mbps: EgressMbps = None,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Move a NIC to another network, change its address, its link, its security groups or
    rate limits; at once if it runs."""
    groups = [] if no_security_groups else security_group
    body: dict[str, Any] = _filtering(groups, ingress_mbps, egress_mbps)
    if network is not None:
        body["network"] = network
    if address is not None:
        body["address"] = address
    if link is not None:
        body["link_up"] = link == "up"
    if not body:
        raise typer.BadParameter(
            "give --network, --address, --link, --security-group or a rate limit"
        )
    client = Client()
    _nic_result(
        client, client.request("PATCH", f"/vms/{vm}/nics/{index}", json=body), wait, as_json
    )


@nic_app.command("remove")
def nic_remove(vm: str, index: NicIndex, wait: Wait = True, as_json: Json = False) -> None:
    """Take a NIC away (out of a running guest too); its MAC and address are free again."""
    client = Client()
    _nic_result(client, client.request("DELETE", f"/vms/{vm}/nics/{index}"), wait, as_json)


@app.command("console")
def vm_console(vm: str) -> None:
    """Attach this terminal to a VM's serial console; Ctrl-] leaves."""
    code = console.attach(Client(), vm, sys.stdin.fileno(), sys.stdout.buffer, sys.stderr)
    if code:
        raise typer.Exit(code)


@app.command("delete")
def vm_delete(
    vm: str,
    volumes: Annotated[bool, typer.Option("--volumes", help="delete its volumes")] = False,
    wait: Wait = True,
    as_json: Json = False,
) -> None:
    """Delete a VM, stopping it first."""
    client = Client()
    reply = client.request("DELETE", f"/vms/{vm}", params={"volumes": volumes})
    finish(client, reply, wait, as_json)
