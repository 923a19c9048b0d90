"""Live migration over TLS between two real QEMUs (TCG), as agent/migration.py sets it up:
`tls-creds-x509` objects made from node credentials of one cluster CA, the target's asking
for the source's certificate. A source without TLS, or with a certificate of another CA, gets
nothing across; one with the cluster's certificate does, and the bytes on the wire are not
the guest's memory in the clear."""

import asyncio
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from fakes.running import short_directory

from heron.hypervisor import command
from heron.hypervisor.command import RuntimePaths
from heron.hypervisor.qemu import QemuVM
from heron.models.common import new_id
from heron.models.vm import VM, VMSpec
from heron.tls import Authority, NodeCredentials, issue, make_authority

pytestmark = pytest.mark.integration

Launch = Callable[..., Awaitable[QemuVM]]
DEADLINE = 60.0


@pytest.fixture
def root() -> Iterator[Path]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    with short_directory() as directory:
        yield directory


@pytest.fixture
async def launch(root: Path) -> AsyncIterator[Launch]:
    """A diskless TCG QEMU (the firmware is guest enough to migrate), killed at the end."""
    started: list[QemuVM] = []

    async def start(*extra: str) -> QemuVM:
        vm = VM(id=new_id(), spec=VMSpec(name="m", memory_mib=64), node="n", created_at=1)
        qemu = QemuVM(vm.id, RuntimePaths(root / vm.id))
        await qemu.launch([*command.build(vm, [], qemu.paths, "tcg"), *extra])
        started.append(qemu)
        return qemu

    yield start
    for qemu in started:
        await qemu.kill()
        await qemu.close()


CLUSTER = make_authority("c1", time.time())


def node(directory: Path, name: str, issuer: Authority = CLUSTER) -> NodeCredentials:
    """Credentials of node `name`: a certificate `issuer` signed; trusted: the cluster's CA
    (and `issuer`: QEMU checks its own certificate against the CAs it trusts)."""
    now = time.time()
    credentials = NodeCredentials(directory / name / "tls")
    trusted = CLUSTER.certificate + ("" if issuer is CLUSTER else issuer.certificate)
    credentials.write(issue(issuer, [name, "127.0.0.1"], now), trusted)
    return credentials


async def creds(qemu: QemuVM, credentials: NodeCredentials, root: Path, *, server: bool) -> str:
    """A tls-creds-x509 object from a copy of `credentials`, the copy gone afterwards."""
    copy = root / f"copy-{new_id()}"
    credentials.export_for_qemu(copy)
    await qemu.tls_creds_add("heron-tls-test", str(copy), server=server)
    shutil.rmtree(copy)
    return "heron-tls-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def listening_target(launch: Launch, root: Path) -> tuple[QemuVM, int]:
    target = await launch("-incoming", "defer")
    name = await creds(target, node(root, "target"), root, server=True)
    await target.migrate_set_parameters(tls_creds=name)
    port = free_port()
    await target.migrate_incoming(f"tcp:127.0.0.1:{port}")
    return target, port


async def outcome(source: QemuVM) -> str:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        status = (await source.outgoing_migration()).status
        if status in ("completed", "failed", "cancelled"):
            return status
        await asyncio.sleep(0.05)  # QEMU reports progress only when asked
    raise AssertionError("the migration did not end")


async def through_relay(source: QemuVM, port: int) -> bytes:
    """Migrate `source` to the target listening on `port` through a relay that records
    what crosses the wire (both directions, as they come)."""
    seen = bytearray()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            seen.extend(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    async with server:
        relay_port = server.sockets[0].getsockname()[1]
        await source.migrate(f"tcp:127.0.0.1:{relay_port}")
        assert await outcome(source) == "completed"
    return bytes(seen)


async def test_plain_migration_shows_the_guest_memory(launch: Launch) -> None:
    """The control of the test below: what a plain migration puts on the wire."""
    target = await launch("-incoming", "defer")
    port = free_port()
    await target.migrate_incoming(f"tcp:127.0.0.1:{port}")
    seen = await through_relay(await launch(), port)
    assert seen.startswith(b"QEVM") and b"SeaBIOS" in seen


async def test_the_cluster_certificate_gets_the_guest_across_encrypted(
    launch: Launch, root: Path
) -> None:
    target, port = await listening_target(launch, root)
    assert (await target.migration_parameters())["tls-creds"] == "heron-tls-test"
    source = await launch()
    name = await creds(source, node(root, "source"), root, server=False)
    await source.migrate_set_parameters(tls_creds=name, tls_hostname="target")

    seen = await through_relay(source, port)
    assert len(seen) > 100 * 1024
    # QEMU's stream starts with "QEVM", and the firmware in guest memory names itself: both
    # cross in the clear without TLS (see the control below), neither does with it.
    assert b"QEVM" not in seen and b"SeaBIOS" not in seen
    assert bytes(seen[:1]) == b"\x16"  # a TLS handshake record
    assert (await source.migration_parameters())["tls-creds"] == "heron-tls-test"


async def test_a_source_without_the_cluster_certificate_is_refused(
    launch: Launch, root: Path
) -> None:
    # Plain: the target waits for a TLS handshake and gets the stream's header instead.
    target, port = await listening_target(launch, root)
    plain = await launch()
    await plain.migrate(f"tcp:127.0.0.1:{port}")
    assert await outcome(plain) == "failed"
    assert (await target.run_state()) != "running"

    # TLS, with a certificate of another cluster's CA: the target refuses it.
    target, port = await listening_target(launch, root)
    stranger = await launch()
    # Its certificate is of another CA; it trusts the cluster's too (ca-cert.pem is no
    # secret), so it is the target that refuses.
    other = make_authority("other", time.time())
    name = await creds(stranger, node(root, "stranger", other), root, server=False)
    await stranger.migrate_set_parameters(tls_creds=name, tls_hostname="target")
    await stranger.migrate(f"tcp:127.0.0.1:{port}")
    assert await outcome(stranger) == "failed"
    assert (await target.run_state()) != "running"
