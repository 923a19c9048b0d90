"""Unit tests for the pure logic of the test guest builder (no apt, no QEMU)."""

from __future__ import annotations

import gzip
import re
import shutil
import socket
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from heron.testguest import build
from heron.testguest.build import BuildError, NewcArchive

APT_CACHE_DEPENDS = """linux-image-cloud-amd64
  Depends: linux-image-6.1.0-56-cloud-amd64
"""

APT_CACHE_SHOW = """Package: linux-image-6.1.0-56-cloud-amd64
Version: 6.1.192-2
Description: Linux 6.1 for x86-64 cloud
 A continuation line: that is not a field.

Package: busybox-static
Version: 1:1.35.0-4+deb12u1+b1
"""


def read_newc(data: bytes) -> dict[str, tuple[list[int], bytes]]:
    """Minimal newc reader, independent of the writer, that also checks the alignment rules."""
    entries: dict[str, tuple[list[int], bytes]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        filesize, namesize = fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        assert data[pos + 110 + namesize - 1] == 0
        pos = -(-(pos + 110 + namesize) // 4) * 4
        body = data[pos : pos + filesize]
        pos = -(-(pos + filesize) // 4) * 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return entries
        entries[name] = (fields, body)


def fake_module(modinfo: dict[str, str]) -> bytes:
    """A minimal ELF64 relocatable with just a .modinfo and a section name table."""
    body = b"".join(f"{key}={value}".encode() + b"\0" for key, value in modinfo.items())
    names = b"\0.modinfo\0.shstrtab\0"
    body_offset = 64
    names_offset = body_offset + len(body)
    section_offset = names_offset + len(names)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, section_offset)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)

    def section(name: int, offset: int, size: int) -> bytes:
        entry = bytearray(64)
        struct.pack_into("<I", entry, 0, name)
        struct.pack_into("<QQ", entry, 24, offset, size)
        return bytes(entry)

    sections = (
        section(0, 0, 0)
        + section(1, body_offset, len(body))
        + section(10, names_offset, len(names))
    )
    return bytes(header) + body + names + sections


def test_kernel_cmdline_keeps_serial_console_and_reboot_on_panic() -> None:
    assert build.KERNEL_CMDLINE.split() == [
        "console=ttyS0,115200",
        "quiet",
        "panic=-1",
        f"heron.memcheck={build.MEMCHECK_DEFAULT}",
    ]
    cfg = build.render_syslinux_cfg()
    assert f"  APPEND {build.KERNEL_CMDLINE}\n" in cfg
    assert "LINUX /vmlinuz\n" in cfg
    assert "INITRD /initrd.gz\n" in cfg
    # Any prompt or timeout would stall an unattended boot.
    assert "PROMPT 0\n" in cfg
    assert "TIMEOUT 0\n" in cfg


def test_parse_kernel_dependency() -> None:
    assert build.parse_kernel_dependency(APT_CACHE_DEPENDS) == "linux-image-6.1.0-56-cloud-amd64"
    with pytest.raises(BuildError):
        build.parse_kernel_dependency("linux-image-cloud-amd64\n")


def test_parse_control_stanzas_ignores_continuation_lines() -> None:
    stanzas = build.parse_control_stanzas(APT_CACHE_SHOW)
    assert [(s["Package"], s["Version"]) for s in stanzas] == [
        ("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2"),
        ("busybox-static", "1:1.35.0-4+deb12u1+b1"),
    ]
    assert build.DebPackage("busybox-static", "1:1.35").spec == "busybox-static=1:1.35"


def test_modules_to_load_follows_kernel_config() -> None:
    builtins = {key: "y" for key in build.REQUIRED_BUILTIN_CONFIG}
    config = build.parse_kernel_config(
        'CONFIG_ACPI_BUTTON=m\n# CONFIG_FOO is not set\nCONFIG_INPUT_EVDEV=y\nCONFIG_X="a"\n'
    )
    assert config["CONFIG_X"] == "a"
    assert "CONFIG_FOO" not in config
    assert build.modules_to_load({**builtins, **config}) == ["button"]
    with pytest.raises(BuildError, match="CONFIG_INPUT_EVDEV"):
        build.modules_to_load({**builtins, "CONFIG_ACPI_BUTTON": "m"})
    with pytest.raises(BuildError, match="CONFIG_DMIID"):
        build.modules_to_load({**builtins, **config, "CONFIG_DMIID": "m"})


def test_network_modules_follow_kernel_config() -> None:
    config = {
        "CONFIG_VIRTIO_PCI": "m",
        "CONFIG_VIRTIO_NET": "m",
        "CONFIG_VLAN_8021Q": "m",
        "CONFIG_PACKET": "y",
    }
    assert build.network_modules(config) == ["virtio_pci", "virtio_net", "8021q"]
    assert build.network_modules({**config, "CONFIG_E1000": "m"})[-1] == "e1000"
    assert "e1000" not in build.network_modules({**config, "CONFIG_E1000": "y"})
    for key in config:
        with pytest.raises(BuildError, match=key):
            build.network_modules({k: v for k, v in config.items() if k != key})


def test_read_modinfo() -> None:
    info = build.read_modinfo(fake_module({"license": "GPL", "depends": "a,b-c"}))
    assert info == {"license": "GPL", "depends": "a,b-c"}
    with pytest.raises(BuildError):
        build.read_modinfo(b"not an elf file at all, not even close....")


def test_resolve_modules_puts_dependencies_first(tmp_path: Path) -> None:
    kernel = tmp_path / "kernel" / "drivers"
    kernel.mkdir(parents=True)
    (kernel / "button.ko").write_bytes(fake_module({"depends": "input-core"}))
    (kernel / "input_core.ko").write_bytes(fake_module({"depends": ""}))
    (kernel / "evdev.ko").write_bytes(fake_module({"depends": "input_core"}))
    modules = build.resolve_modules(tmp_path, ["button", "evdev"])
    assert [name for name, _ in modules] == ["input_core", "button", "evdev"]
    with pytest.raises(BuildError, match="missing"):
        build.resolve_modules(tmp_path, ["missing"])
    (kernel / "loop_a.ko").write_bytes(fake_module({"depends": "loop_b"}))
    (kernel / "loop_b.ko").write_bytes(fake_module({"depends": "loop_a"}))
    with pytest.raises(BuildError, match="loop"):
        build.resolve_modules(tmp_path, ["loop_a"])


def test_newc_archive_round_trip() -> None:
    archive = NewcArchive()
    archive.directory("dev")
    archive.char_device("dev/console", 5, 1)
    archive.file("init", b"#!/bin/sh\n", 0o755)
    archive.symlink("bin/sh", "busybox")
    entries = read_newc(archive.finish())
    assert list(entries) == ["dev", "dev/console", "init", "bin/sh"]
    console, _ = entries["dev/console"]
    assert stat.S_ISCHR(console[1])
    assert (console[9], console[10]) == (5, 1)
    init, body = entries["init"]
    assert stat.S_ISREG(init[1])
    assert stat.S_IMODE(init[1]) == 0o755
    assert body == b"#!/bin/sh\n"
    link, target = entries["bin/sh"]
    assert stat.S_ISLNK(link[1])
    assert target == b"busybox"
    inodes = [fields[0] for fields, _ in entries.values()]
    assert len(set(inodes)) == len(inodes)


def test_initramfs_is_reproducible_and_complete() -> None:
    modules = [("button", b"\x7fELF-button"), ("evdev", b"\x7fELF-evdev")]
    net = [("virtio_net", b"\x7fELF-virtio_net")]
    first = build.build_initramfs(
        b"BUSYBOX", modules, b"MEMCHECK", network_modules=net, nettool=b"NETTOOL"
    )
    assert first == build.build_initramfs(
        b"BUSYBOX", modules, b"MEMCHECK", network_modules=net, nettool=b"NETTOOL"
    )
    entries = read_newc(gzip.decompress(first))
    assert entries["bin/busybox"][1] == b"BUSYBOX"
    assert entries[build.MEMCHECK_BINARY][1] == b"MEMCHECK"
    assert entries[build.NETTOOL_BINARY][1] == b"NETTOOL"
    for path, source in build.GUEST_SCRIPTS.items():
        assert entries[path][1] == source.read_bytes()
        assert stat.S_IMODE(entries[path][0][1]) == 0o755
    assert entries["lib/modules/virtio_net.ko"][1] == b"\x7fELF-virtio_net"
    assert "insmod /lib/modules/virtio_net.ko" in entries["init"][1].decode()
    assert stat.S_IMODE(entries[build.MEMCHECK_BINARY][0][1]) == 0o755
    for applet in build.BUSYBOX_APPLETS:
        assert entries[f"bin/{applet}"][1] == b"busybox"
    assert entries["lib/modules/evdev.ko"][1] == b"\x7fELF-evdev"
    assert stat.S_IMODE(entries["init"][0][1]) == 0o755
    assert "dev/console" in entries


def test_init_script_protocol() -> None:
    script = build.render_init(["button", "evdev"])
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert lines.index("insmod /lib/modules/button.ko") < lines.index(
        "insmod /lib/modules/evdev.ko"
    )
    for needed in ("mount -t proc", "mount -t sysfs", "mount -t devtmpfs"):
        assert needed in script
    assert "/sys/class/dmi/id/product_uuid" in script
    assert 'echo "HERON-GUEST-READY uuid=${uuid:-unknown}"' in lines
    assert '    echo "heron-tick $n"' in lines
    # The power button must be opened before READY is announced, and the marker must come out
    # before the machine is gone.
    assert script.index("exec $fd<") < script.index("HERON-GUEST-READY")
    # The memory checker starts, in the background, from the settings on the command line.
    assert f'    /{build.MEMCHECK_BINARY} "$@" &' in lines
    assert script.index("heron.memcheck=*)") < script.index(build.MEMCHECK_BINARY + ' "$@"')
    assert script.index("HERON-GUEST-POWEROFF") < script.index("poweroff -f")
    used = {line.split()[0] for line in lines if line and not line.startswith(("#", " "))}
    assert {"mount", "insmod"} <= used


def test_init_brings_the_network_up_without_holding_up_ready() -> None:
    script = build.render_init(["button"], ["virtio_net", "8021q"])
    lines = script.splitlines()
    ready = script.index("HERON-GUEST-READY")
    # Drivers, DHCP and nettool's server in one background job started before READY...
    start = lines.index("(")
    end = lines.index(") &")
    job = lines[start:end]
    assert "    insmod /lib/modules/virtio_net.ko" in job
    assert job.index("    insmod /lib/modules/8021q.ko") < job.index("    /bin/heron-net-up")
    assert f"    /{build.NETTOOL_BINARY} serve {build.NETTOOL_PORT}" in job
    assert script.index(") &") < ready
    # ...and the command channel reads the console, also from before READY.
    assert "/bin/heron-commands </dev/console &" in lines
    assert script.index("/bin/heron-commands") < ready
    # The scripts use only applets the image links.
    for applet in ("ip", "udhcpc", "stty", "mkdir", "rm", "ping", "nc"):
        assert applet in build.BUSYBOX_APPLETS
    assert set(build.GUEST_SCRIPTS) == {
        "bin/heron-net-up",
        "bin/heron-dhcp-event",
        "bin/heron-commands",
    }


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell to syntax-check with")
@pytest.mark.parametrize("path", sorted(build.GUEST_SCRIPTS))
def test_guest_scripts_are_valid_shell(path: str) -> None:
    source = build.GUEST_SCRIPTS[path]
    result = subprocess.run(["sh", "-n", str(source)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert source.read_text().startswith("#!/bin/sh\n")


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell to syntax-check with")
def test_init_script_is_valid_shell() -> None:
    result = subprocess.run(
        ["sh", "-n"],
        input=build.render_init(["button"], ["virtio_net"]),
        text=True,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_memcheck_settings_are_checked() -> None:
    assert build.parse_memcheck("48:256:1024") == (48, 256, 1024)
    assert build.parse_memcheck(build.MEMCHECK_DEFAULT) == (32, 64, 256)
    for bad in ("48", "0:1:1", "a:b:c", "1:2:3:4", "1:-2:3"):
        with pytest.raises(BuildError, match="MIB:HOT:RATE"):
            build.parse_memcheck(bad)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_memcheck_compiles_to_a_static_binary(tmp_path: Path) -> None:
    binary = build.compile_memcheck(tmp_path)
    assert binary[:4] == b"\x7fELF"
    # No PT_INTERP program header: it needs no dynamic loader, as the guest has no libc.
    phoff = struct.unpack_from("<Q", binary, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", binary, 0x36)
    types = [struct.unpack_from("<I", binary, phoff + i * phentsize)[0] for i in range(phnum)]
    assert types and 3 not in types


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_nettool_measures_over_loopback(tmp_path: Path) -> None:
    """The guest's network tool, run here: an echo/sink server and its two clients."""
    build.compile_nettool(tmp_path)
    tool = tmp_path / "nettool"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    server = subprocess.Popen([tool, "serve", port], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        # It says so once it listens: no polling for the port.
        assert server.stdout.readline() == f"heron-nettool serving port={port}\n"
        rtt = subprocess.run(
            [tool, "rtt", "127.0.0.1", port, "5"], capture_output=True, text=True, timeout=30
        )
        assert rtt.returncode == 0, rtt.stderr
        assert re.fullmatch(
            r"rtt_us_median=\d+ rtt_us_min=\d+ rtt_us_max=\d+ count=5\n", rtt.stdout
        )
        send = subprocess.run(
            [tool, "send", "::1", port, "1"], capture_output=True, text=True, timeout=30
        )
        assert send.returncode == 0, send.stderr
        found = re.fullmatch(r"throughput_bps=(\d+) bytes=(\d+) seconds=[\d.]+\n", send.stdout)
        assert found and int(found.group(1)) > 0 and int(found.group(2)) > 0
        bad = subprocess.run([tool, "rtt", "localhost", port, "1"], capture_output=True, text=True)
        assert bad.returncode == 2 and "not an IPv4 or IPv6 address" in bad.stderr
    finally:
        server.kill()
        server.wait()


def test_disk_layout() -> None:
    mib = build.MIB
    size = build.partition_size(15 * mib)
    assert size % build.PARTITION_ROUNDING_BYTES == 0
    assert size >= 15 * mib + build.PARTITION_SLACK_BYTES
    assert build.PARTITION_START_SECTOR * build.SECTOR_SIZE + size <= build.MAX_IMAGE_BYTES
    script = build.sfdisk_script(2048, size // 512)
    assert script.startswith("label: dos\n")
    assert f"start=2048, size={size // 512}, type=e, bootable\n" in script
