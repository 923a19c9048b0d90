"""The QEMU command line (heron.hypervisor.command.build): its contents, and real QEMU's verdict.

The tests marked `integration` start qemu-system-x86_64 (stopped with -S, TCG) on the built
arguments against small qcow2 files, so a command line QEMU would refuse fails here.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from support import wait_for

from heron.hypervisor import command
from heron.hypervisor.accel import parse_qemu_version
from heron.hypervisor.command import ResolvedDisk, RuntimePaths, boot_indexes, build, mac_for
from heron.models.vm import VM, VMSpec

VM_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def make_vm(
    buses: list[str] = (),
    nics: list[dict[str, str]] = (),
    vm_id: str = VM_ID,
    **hardware: object,
) -> VM:
    spec = VMSpec.model_validate(
        {
            "name": "vm1",
            "disks": [{"bus": bus, "volume": f"vol{i}"} for i, bus in enumerate(buses)],
            "nics": list(nics),
            **hardware,
        }
    )
    return VM(id=vm_id, spec=spec, node="n1", created_at=0)


def file(path: Path) -> dict[str, str]:
    return {"driver": "file", "filename": str(path), "aio": "threads"}


def resolved(vm: VM, directory: Path = Path("/images")) -> list[ResolvedDisk]:
    return [
        ResolvedDisk(d.bus, file(directory / f"disk{i}.qcow2"), "qcow2")
        for i, d in enumerate(vm.spec.disks)
    ]


def args_for(vm: VM, accelerator: str = "tcg", root: Path = Path("/run/vm")) -> list[str]:
    return build(vm, resolved(vm), RuntimePaths(root), accelerator)


def values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == option]


def value(args: list[str], option: str) -> str:
    found = values(args, option)
    assert len(found) == 1, f"{option}: {found}"
    return found[0]


def devices(args: list[str]) -> list[str]:
    return values(args, "-device")


def disk_device(args: list[str], index: int) -> str:
    [found] = [d for d in devices(args) if f"drive=disk{index}," in d]
    return found


def props(device: str) -> dict[str, str]:
    parts = device.split(",")
    return {"driver": parts[0], **dict(p.split("=", 1) for p in parts[1:])}


# -- the basics ------------------------------------------------------------------------------


def test_identity_and_resources() -> None:
    vm = make_vm(["virtio"], vcpus=3, memory_mib=768)
    args = args_for(vm)
    assert args[0] == "qemu-system-x86_64"
    assert value(args, "-uuid") == VM_ID
    assert value(args, "-name").startswith("vm1,")
    assert value(args, "-smp") == "3"
    assert value(args, "-m") == "768"
    assert "-daemonize" in args
    assert "-nodefaults" in args


def test_the_consoles_are_reachable_from_the_node_only() -> None:
    # docs/threat-model.md: VNC listens on loopback (the API relays it behind a ticket), and
    # the serial console is a unix socket.
    args = args_for(make_vm())
    assert value(args, "-vnc").split(",")[0].startswith("127.0.0.1:")
    [serial] = [c for c in values(args, "-chardev") if c.startswith("socket,id=serial0,")]
    assert "path=/run/vm/serial.sock" in serial and "host=" not in serial


@pytest.mark.parametrize("memory_mib", [64, 128, 768, 4096, 65536])
def test_tcg_on_qemu_before_9_gets_ram_off_the_256k_grid(memory_mib: int) -> None:
    # Off the grid, QEMU 7.2's dirty-bitmap sync goes page by page and keeps TCG's TLB in step
    # (docs/architecture.md, "Live migration under TCG").
    padded = command.ram_kib(memory_mib, "tcg", (7, 2))
    assert padded == memory_mib * 1024 + 8 and padded % 256 != 0
    assert command.ram_kib(memory_mib, "tcg", (0, 0)) == padded  # version unknown: the safe side
    assert command.ram_kib(memory_mib, "tcg", (9, 0)) == memory_mib * 1024
    assert command.ram_kib(memory_mib, "kvm", (7, 2)) == memory_mib * 1024
    assert command.loses_writes(memory_mib * 1024, "tcg", (7, 2))
    assert not command.loses_writes(padded, "tcg", (7, 2))


def test_ram_is_given_in_kib_when_set() -> None:
    args = build(make_vm(memory_mib=128), [], RuntimePaths(Path("/r")), "tcg", ram=131080)
    assert value(args, "-m") == "131080K"


@pytest.mark.parametrize(
    ("line", "version"),
    [
        ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", (7, 2)),
        ("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)", (10, 0)),
        ("unknown", (0, 0)),
    ],
)
def test_qemu_version_is_read_from_its_banner(line: str, version: tuple[int, int]) -> None:
    assert parse_qemu_version(line) == version


def test_binary_can_be_chosen() -> None:
    args = build(make_vm(), [], RuntimePaths(Path("/r")), "tcg", binary="/opt/qemu")
    assert args[0] == "/opt/qemu"


@pytest.mark.parametrize(("accel", "cpu"), [("tcg", "max"), ("kvm", "host")])
def test_accelerator_and_cpu(accel: str, cpu: str) -> None:
    args = args_for(make_vm(machine="pc"), accelerator=accel)
    assert value(args, "-machine") == f"pc,accel={accel}"
    assert value(args, "-cpu") == cpu


def test_runtime_paths_are_used() -> None:
    root = Path("/srv/state/vms/abc")
    args = args_for(make_vm(), root=root)
    assert value(args, "-pidfile") == str(root / "qemu.pid")
    chardevs = values(args, "-chardev")
    assert any(f"path={root / 'qmp.sock'}" in c for c in chardevs)
    serial = next(c for c in chardevs if "id=serial0" in c)
    assert f"path={root / 'serial.sock'}" in serial
    assert f"logfile={root / 'console.log'}" in serial
    assert value(args, "-mon") == "chardev=qmp,mode=control"


# -- disks -----------------------------------------------------------------------------------


def test_blockdev_layers_the_format_on_the_pool_protocol() -> None:
    vm = make_vm(["virtio", "scsi", "virtio"])
    disks = resolved(vm)
    disks[1] = ResolvedDisk("scsi", file(Path("/images/raw.img")), "raw")
    lun = {"driver": "iscsi", "transport": "tcp", "portal": "h:3260", "target": "iqn.x:y", "lun": 1}
    disks[2] = ResolvedDisk("virtio", lun, "raw")
    args = build(vm, disks, RuntimePaths(Path("/r")), "tcg")
    blockdevs = [json.loads(b) for b in values(args, "-blockdev")]
    assert [b["node-name"] for b in blockdevs] == ["disk0", "disk1", "disk2"]
    assert [b["driver"] for b in blockdevs] == ["qcow2", "raw", "raw"]
    assert [b["file"] for b in blockdevs] == [
        file(Path("/images/disk0.qcow2")),
        file(Path("/images/raw.img")),
        lun,
    ]


@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_virtio_disks(machine: str) -> None:
    args = args_for(make_vm(["virtio", "virtio"], machine=machine))
    assert props(disk_device(args, 0)) == {
        "driver": "virtio-blk-pci",
        "drive": "disk0",
        "id": "disk0-dev",
        "bootindex": "1",
    }
    assert props(disk_device(args, 1)) == {
        "driver": "virtio-blk-pci",
        "drive": "disk1",
        "id": "disk1-dev",
    }


@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_scsi_disks(machine: str) -> None:
    args = args_for(make_vm(["scsi", "scsi"], machine=machine))
    assert devices(args).count("virtio-scsi-pci,id=scsi0") == 1
    first, second = props(disk_device(args, 0)), props(disk_device(args, 1))
    assert first["driver"] == second["driver"] == "scsi-hd"
    assert first["bus"] == second["bus"] == "scsi0.0"
    assert (first["scsi-id"], second["scsi-id"]) == ("0", "1")
    assert first["lun"] == "0"


@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_sata_disks(machine: str) -> None:
    args = args_for(make_vm(["sata", "sata"], machine=machine))
    assert devices(args).count("ahci,id=sata0") == 1
    assert props(disk_device(args, 0))["bus"] == "sata0.0"
    assert props(disk_device(args, 1))["bus"] == "sata0.1"
    assert props(disk_device(args, 1))["driver"] == "ide-hd"


def test_ide_disks_on_pc_use_two_buses_of_two_units() -> None:
    args = args_for(make_vm(["ide"] * 4, machine="pc"))
    places = [
        (props(disk_device(args, i))["bus"], props(disk_device(args, i))["unit"]) for i in range(4)
    ]
    assert places == [("ide.0", "0"), ("ide.0", "1"), ("ide.1", "0"), ("ide.1", "1")]
    assert all(props(disk_device(args, i))["driver"] == "ide-hd" for i in range(4))


def test_ide_disks_on_versioned_i440fx() -> None:
    args = args_for(make_vm(["ide", "ide"], machine="pc-i440fx-7.2"))
    assert props(disk_device(args, 1))["bus"] == "ide.0"
    assert props(disk_device(args, 1))["unit"] == "1"


def test_ide_disks_on_q35_use_the_ahci_ports() -> None:
    args = args_for(make_vm(["ide", "ide"], machine="q35"))
    assert props(disk_device(args, 0)) == {
        "driver": "ide-hd",
        "bus": "ide.0",
        "drive": "disk0",
        "id": "disk0-dev",
        "bootindex": "1",
    }
    assert props(disk_device(args, 1))["bus"] == "ide.1"
    assert "unit" not in props(disk_device(args, 1))


def test_ide_disks_on_versioned_q35() -> None:
    args = args_for(make_vm(["ide", "ide"], machine="pc-q35-7.2"))
    assert props(disk_device(args, 1))["bus"] == "ide.1"
    assert "unit" not in props(disk_device(args, 1))


@pytest.mark.parametrize(
    ("buses", "controllers"),
    [
        ([], set()),
        (["virtio"], set()),
        (["ide"], set()),
        (["scsi"], {"virtio-scsi-pci,id=scsi0"}),
        (["sata"], {"ahci,id=sata0"}),
        (["scsi", "sata", "virtio", "scsi"], {"virtio-scsi-pci,id=scsi0", "ahci,id=sata0"}),
    ],
)
def test_controllers_only_when_needed(buses: list[str], controllers: set[str]) -> None:
    args = args_for(make_vm(buses))
    found = [d for d in devices(args) if d.startswith(("virtio-scsi-pci", "ahci"))]
    assert sorted(found) == sorted(controllers)  # and each at most once


def test_controllers_come_before_their_disks() -> None:
    args = args_for(make_vm(["scsi", "sata"]))
    assert args.index("virtio-scsi-pci,id=scsi0") < args.index(disk_device(args, 0))
    assert args.index("ahci,id=sata0") < args.index(disk_device(args, 1))


# -- boot order ------------------------------------------------------------------------------


def test_default_boot_is_the_first_disk() -> None:
    vm = make_vm(["virtio", "virtio"], nics=[{}])
    assert boot_indexes(vm) == {"disk0": 1}
    args = args_for(vm)
    assert props(disk_device(args, 0))["bootindex"] == "1"
    assert "bootindex" not in props(disk_device(args, 1))
    nic = props(next(d for d in devices(args) if "netdev=net0" in d))
    assert "bootindex" not in nic
    assert nic["romfile"] == ""  # no option ROM when the NIC is not booted from


def test_no_disks_no_boot_order_means_no_bootindex() -> None:
    args = args_for(make_vm(nics=[{}]))
    assert not any("bootindex" in d for d in devices(args))


def test_boot_order_sets_bootindexes() -> None:
    vm = make_vm(["virtio", "scsi", "sata"], nics=[{}, {}], boot_order=["net1", "disk2", "disk0"])
    assert boot_indexes(vm) == {"net1": 1, "disk2": 2, "disk0": 3}
    args = args_for(vm)
    assert props(disk_device(args, 0))["bootindex"] == "3"
    assert "bootindex" not in props(disk_device(args, 1))
    assert props(disk_device(args, 2))["bootindex"] == "2"
    net0 = props(next(d for d in devices(args) if "netdev=net0" in d))
    net1 = props(next(d for d in devices(args) if "netdev=net1" in d))
    assert "bootindex" not in net0
    assert net1["bootindex"] == "1"
    assert "romfile" not in net1  # its PXE ROM is needed


def test_bootindexes_are_unique() -> None:
    vm = make_vm(["ide"] * 3, nics=[{}] * 2, boot_order=["disk2", "net0", "disk1", "net1"])
    indexes = [props(d)["bootindex"] for d in devices(args_for(vm)) if "bootindex=" in d]
    assert sorted(indexes) == ["1", "2", "3", "4"]


# -- firmware --------------------------------------------------------------------------------


def test_bios_has_no_pflash() -> None:
    assert not any("pflash" in d for d in values(args_for(make_vm(["virtio"])), "-drive"))


def test_uefi_adds_code_and_vars_pflash() -> None:
    root = Path("/run/vm")
    drives = values(args_for(make_vm(["virtio"], firmware="uefi"), root=root), "-drive")
    assert len(drives) == 2
    code, variables = (props("x," + d) for d in drives)
    assert code["if"] == variables["if"] == "pflash"
    assert (code["unit"], variables["unit"]) == ("0", "1")
    assert code["readonly"] == "on"
    assert code["file"] == str(command.OVMF_CODE)
    assert "readonly" not in variables
    assert variables["file"] == str(root / "efivars.fd")


# -- NICs ------------------------------------------------------------------------------------


def test_nics_models_and_user_netdevs() -> None:
    vm = make_vm(nics=[{"model": "virtio"}, {"model": "e1000", "mac": "52:54:00:aa:bb:cc"}])
    args = args_for(vm)
    assert values(args, "-netdev") == ["user,id=net0", "user,id=net1"]
    net0 = props(next(d for d in devices(args) if "netdev=net0" in d))
    net1 = props(next(d for d in devices(args) if "netdev=net1" in d))
    assert net0["driver"] == "virtio-net-pci"
    assert net0["mac"] == mac_for(VM_ID, 0)
    assert net1["driver"] == "e1000"
    assert net1["mac"] == "52:54:00:aa:bb:cc"
    assert (net0["id"], net1["id"]) == ("net0-dev", "net1-dev")


def test_nic_with_network_none_is_skipped() -> None:
    vm = make_vm(nics=[{"network": "none"}, {}])
    args = args_for(vm)
    assert values(args, "-netdev") == ["user,id=net1"]
    nic_devices = [d for d in devices(args) if "netdev=" in d]
    assert len(nic_devices) == 1
    # The remaining NIC keeps its own index and MAC.
    assert props(nic_devices[0])["mac"] == mac_for(VM_ID, 1)


def test_nic_on_a_network_takes_its_tap_fd() -> None:
    vm = make_vm(nics=[{"network": "lan", "mac": "52:54:00:00:00:07"}, {}])
    args = build(vm, resolved(vm), RuntimePaths(Path("/run/vm")), "tcg", taps={0: 9})
    assert values(args, "-netdev") == ["tap,id=net0,fd=9,vhost=off", "user,id=net1"]
    assert props(next(d for d in devices(args) if "netdev=net0" in d))["mac"] == "52:54:00:00:00:07"
    vhost = build(vm, resolved(vm), RuntimePaths(Path("/run/vm")), "tcg", taps={0: 9}, vhost=True)
    assert values(vhost, "-netdev")[0] == "tap,id=net0,fd=9,vhost=on"
    with pytest.raises(ValueError, match="no tap"):
        build(vm, resolved(vm), RuntimePaths(Path("/run/vm")), "tcg")


def test_mac_for_is_stable_and_distinct() -> None:
    assert mac_for(VM_ID, 0) == mac_for(VM_ID, 0)
    assert mac_for(VM_ID, 0) == "52:54:0f:1e:2d:00"
    assert mac_for(VM_ID, 3) == "52:54:0f:1e:2d:03"
    assert len({mac_for(VM_ID, i) for i in range(8)}) == 8
    other = "a1b2c3d4-0000-4000-8000-000000000000"
    assert mac_for(other, 0) != mac_for(VM_ID, 0)


@pytest.mark.parametrize("seed", range(20))
def test_mac_for_is_unicast_locally_administered(seed: int) -> None:
    vm_id = str(uuid.UUID(int=(seed * 0x9E3779B97F4A7C15) % (1 << 128)))
    for index in range(8):
        mac = mac_for(vm_id, index)
        octets = [int(o, 16) for o in mac.split(":")]
        assert len(octets) == 6
        assert mac == mac.lower()
        assert octets[0] & 0x01 == 0, "multicast bit set"
        assert octets[0] & 0x02 == 0x02, "not locally administered"
        # a valid NicSpec MAC, so it could be written back into a spec
        assert make_vm(nics=[{"mac": mac}]).spec.nics[0].mac == mac


# -- real QEMU -------------------------------------------------------------------------------

QEMU = shutil.which("qemu-system-x86_64")
QEMU_IMG = shutil.which("qemu-img")
needs_qemu = pytest.mark.skipif(not (QEMU and QEMU_IMG), reason="QEMU is not installed")


def qmp_status(path: Path) -> str:
    """The run state QEMU reports over QMP.

    The socket file appears while QEMU is still parsing its devices, so its existence proves
    nothing: QMP answers only once every device was created and the main loop runs.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        stream = sock.makefile("rwb")
        replies = []
        for message in ({"execute": "qmp_capabilities"}, {"execute": "query-status"}, None):
            line = stream.readline()
            assert line, "QEMU closed QMP"
            replies.append(json.loads(line))
            if message is not None:
                stream.write(json.dumps(message).encode() + b"\n")
                stream.flush()
        greeting, capabilities, status = replies
        assert "QMP" in greeting
        assert capabilities == {"return": {}}
        return status["return"]["status"]


def qemu_accepts(vm: VM, tmp_path: Path, ram: int | None = None) -> None:
    """Start QEMU paused on the built command line; it must come up and answer over QMP."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(len(vm.spec.disks)):
        subprocess.run(
            [QEMU_IMG, "create", "-q", "-f", "qcow2", str(images / f"disk{i}.qcow2"), "1M"],
            check=True,
        )
    root = tmp_path / "run"
    root.mkdir()
    paths = RuntimePaths(root)
    if vm.spec.firmware == "uefi":
        shutil.copy(command.OVMF_VARS, paths.efivars)
    args = build(vm, resolved(vm, images), paths, "tcg", binary=QEMU, ram=ram)
    args.remove("-daemonize")
    args.append("-S")
    with open(tmp_path / "qemu.out", "w+b") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")

        try:
            wait_for(lambda: paths.qmp.exists() or proc.poll() is not None, 30, "QEMU's QMP socket")
            try:
                status = qmp_status(paths.qmp)
            except (OSError, AssertionError) as exc:
                proc.wait(timeout=30)
                raise AssertionError(f"QEMU refused {args}: {exc!r}\n{output()}") from exc
            assert status == "prelaunch", output()
            assert proc.poll() is None
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.integration
@needs_qemu
@pytest.mark.parametrize(
    ("buses", "machine"),
    [
        (["virtio", "virtio"], "q35"),
        (["scsi", "scsi"], "q35"),
        (["sata", "sata"], "q35"),
        (["ide", "ide"], "q35"),
        (["ide", "ide", "ide"], "pc"),
    ],
    ids=["virtio-q35", "scsi-q35", "sata-q35", "ide-q35", "ide-pc"],
)
def test_qemu_accepts_disks(buses: list[str], machine: str, tmp_path: Path) -> None:
    vm = make_vm(
        buses,
        nics=[{}, {"model": "e1000", "network": "none"}, {"model": "e1000"}],
        machine=machine,
        boot_order=["disk1", "net2"],
    )
    qemu_accepts(vm, tmp_path)


@pytest.mark.integration
@needs_qemu
@pytest.mark.skipif(not command.OVMF_VARS.exists(), reason="OVMF is not installed")
def test_qemu_accepts_uefi(tmp_path: Path) -> None:
    qemu_accepts(make_vm(["virtio"], firmware="uefi"), tmp_path)


@pytest.mark.integration
@needs_qemu
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_qemu_accepts_the_padded_tcg_ram(machine: str, tmp_path: Path) -> None:
    vm = make_vm(["virtio"], machine=machine, memory_mib=256)
    qemu_accepts(vm, tmp_path, ram=command.ram_kib(256, "tcg", (7, 2)))


@pytest.mark.integration
@needs_qemu
def test_qemu_accepts_ide_on_versioned_q35(tmp_path: Path) -> None:
    qemu_accepts(make_vm(["ide", "ide"], machine="pc-q35-7.2"), tmp_path)


@pytest.mark.integration
@needs_qemu
def test_qemu_accepts_sata_after_other_disks(tmp_path: Path) -> None:
    qemu_accepts(make_vm(["virtio"] * 6 + ["sata"]), tmp_path)


# -- the guest agent's channel -----------------------------------------------------------------


def test_no_guest_agent_channel_unless_asked() -> None:
    # Records from before the field keep their command line: a live migration from the
    # previous release must find the same devices on both sides.
    args = args_for(make_vm(["virtio"]))
    assert not any("virtserialport" in a or "virtio-serial" in a for a in args)


def test_the_guest_agent_channel_is_a_named_port_on_a_socket() -> None:
    args = args_for(make_vm(["virtio"], guest_agent=True), root=Path("/run/vm"))
    devices = values(args, "-device")
    assert "virtio-serial-pci,id=vser0" in devices
    port = next(d for d in devices if d.startswith("virtserialport,"))
    assert "name=org.qemu.guest_agent.0" in port and "chardev=qga0" in port
    assert "socket,id=qga0,path=/run/vm/qga.sock,server=on,wait=off" in values(args, "-chardev")
    # After every other device, so turning it on moves none of them.
    assert args.index("virtio-serial-pci,id=vser0") > args.index("-blockdev")


def test_new_vms_get_the_guest_agent_and_stored_ones_keep_theirs() -> None:
    from heron.models.vm import VMCreate

    assert VMCreate(name="a").guest_agent is True
    assert VMSpec.model_validate({"name": "a"}).guest_agent is False


@pytest.mark.integration
@needs_qemu
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_qemu_accepts_the_guest_agent_channel(machine: str, tmp_path: Path) -> None:
    vm = make_vm(["virtio"], nics=[{"slot": 0}], machine=machine, layout=2, guest_agent=True)
    qemu_accepts(vm, tmp_path)


# -- room to grow (layout 3: hotplug) -----------------------------------------------------------


def grown_vm(machine: str = "q35", **hardware: object) -> VM:
    vm = make_vm(["virtio"], nics=[{"slot": 0}], machine=machine, layout=3, **hardware)
    disks = [*vm.spec.disks, vm.spec.disks[0].model_copy(update={"volume": "v1", "slot": 2})]
    return vm.model_copy(update={"spec": vm.spec.model_copy(update={"disks": disks})})


def test_layout_3_starts_with_room_for_vcpus_and_memory() -> None:
    args = args_for(grown_vm(vcpus=2, max_vcpus=6, memory_mib=256, max_memory_mib=1024))
    assert value(args, "-smp") == "2,maxcpus=6"
    assert value(args, "-m") == f"{256 * 1024}K,slots=8,maxmem={1024 * 1024}K"


def test_layout_3_without_maxima_has_no_memory_slots() -> None:
    args = args_for(grown_vm(vcpus=2))
    assert value(args, "-smp") == "2,maxcpus=2"
    assert value(args, "-m") == "512"


def test_the_maximum_keeps_its_distance_from_a_padded_ram() -> None:
    # TCG pads the boot memory by 8 KiB: the room to grow stays whole DIMM blocks.
    vm = grown_vm(memory_mib=256, max_memory_mib=512)
    ram = command.ram_kib(256, "tcg", (7, 2))
    args = build(vm, resolved(vm), RuntimePaths(Path("/r")), "tcg", ram=ram)
    assert value(args, "-m") == f"{ram}K,slots=8,maxmem={ram + 256 * 1024}K"


def test_dimms_plugged_in_while_running_are_on_a_receiving_command_line() -> None:
    vm = grown_vm(memory_mib=640, max_memory_mib=1024, dimms_mib=[256, 128])
    args = args_for(vm)
    assert value(args, "-m") == f"{256 * 1024}K,slots=8,maxmem={1024 * 1024}K"
    assert values(args, "-object") == [
        "memory-backend-ram,id=dimm0-mem,size=256M",
        "memory-backend-ram,id=dimm1-mem,size=128M",
    ]
    assert "pc-dimm,id=dimm1,memdev=dimm1-mem" in devices(args)


def test_vcpus_plugged_in_while_running_are_devices_on_a_receiving_command_line() -> None:
    # A migration target must have them as the source has them: devices, not boot CPUs
    # (a guest that onlined a plugged-in vCPU died on a target that booted it).
    vm = grown_vm(
        vcpus=3, max_vcpus=4, plugged_vcpus=[{"socket-id": 1, "core-id": 0, "thread-id": 0}]
    )
    args = args_for(vm)
    assert value(args, "-smp") == "2,maxcpus=4"
    assert "max-x86_64-cpu,id=cpu0-1-0,core-id=0,socket-id=1,thread-id=0" in devices(args)


def test_disk_slots_are_root_ports_and_a_slotted_disk_sits_in_its_own() -> None:
    args = args_for(grown_vm())
    ports = [d for d in devices(args) if d.startswith("pcie-root-port,id=diskslot")]
    assert len(ports) == 8
    assert ports[0].endswith("addr=0x18.0x0,multifunction=on")
    assert props(disk_device(args, 1))["bus"] == "diskslot2"
    assert "bus" not in props(disk_device(args, 0))
    # Before every device QEMU places itself, as the NIC slots.
    assert args.index(ports[-1]) < args.index(disk_device(args, 0))


def test_on_i440fx_a_slotted_disk_takes_a_slot_of_the_bus() -> None:
    args = args_for(grown_vm("pc"))
    assert not [d for d in devices(args) if "diskslot" in d]
    placed = props(disk_device(args, 1))
    assert (placed["bus"], placed["addr"]) == ("pci.0", "0x1a")


@pytest.mark.integration
@needs_qemu
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_qemu_accepts_room_to_grow(machine: str, tmp_path: Path) -> None:
    vm = grown_vm(
        machine,
        vcpus=2,
        max_vcpus=4,
        memory_mib=384,
        max_memory_mib=1024,
        dimms_mib=[128],
        plugged_vcpus=[{"socket-id": 0, "core-id": 3, "thread-id": 0}],
        guest_agent=True,
    )
    qemu_accepts(vm, tmp_path, ram=command.ram_kib(256, "tcg", (7, 2)))
